"""Files on disk: atomic writes, the cache and its self-checking entries, stable hashes, a stopwatch.

atomic.py     files, folders and a command's output folder, written whole or not at all
cache.py      the cache folder (``cache_root``) and self-checking cache files and folders
hashing.py    stable hashes of values and files; the checksums of a cache folder
stopwatch.py  seconds per named stage; the peak memory a piece of work adds
"""
