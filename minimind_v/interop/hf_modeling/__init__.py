"""Templates copied as they are into an exported transformers directory (see `interop/hf_export.py`).

They import the package's model files under their exported names (`mmv_*.py`, written next to them at export
time), so they are not meant to be imported from here.
"""
