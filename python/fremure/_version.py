"""The one version of the fremure distribution. The wheel's metadata
(build_support/fremure_metadata.py), CMake (FREMURE_VERSION, compiled into fremure_ext._C and
fremure_ext/_build_config.py) and fremure.__version__ all read it."""

__version__ = "0.1.0"
