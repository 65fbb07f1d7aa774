"""dynrt, the native frame-program runtime: C99 sources (``src/``, ``include/``), its CMake
build (``CMakeLists.txt``) and the ctypes binding the tests and host tools use
(``dynexport.runtime.binding``; importing this package loads nothing native)."""
