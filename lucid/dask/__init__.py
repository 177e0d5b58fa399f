"""lucid on ``dask.distributed`` (the optional ``[dask]`` extra).

Importing ``lucid`` never imports dask; these modules do, and say which extra
to install when it is missing.
"""
