"""BitGen's model classes for `trust_remote_code=True` loading, re-exported from the installed `bitgen` package
(`pip install bitgen`); https://github.com/bitgen-ai/bitgen"""
from bitgen.model import BitGenConfig, BitGenModel

__all__ = ["BitGenConfig", "BitGenModel"]
