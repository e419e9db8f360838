"""Where the pass over the dataset runs.

    mining.py   the per-batch graph (the same for every engine): forward, maxima, top K, heatmaps
    local.py    in this process: decoding threads, one graph per batch, host statistics overlapped
    partial.py  the pass as a mergeable summary (any split, merged in any order: the same result)
    shards.py   --shard I/N and `reportgen merge`: partial states in files, checked before merging
    ray.py      --engine ray: Ray Data actors run local.py's pass per task; the driver merges
    cams.py     Grad-CAM in the pass's graph; which maps the galleries of mistakes may still show
    explain.py  Grad-CAM by a second read (what the pass did not keep) and the relevance pass
"""
