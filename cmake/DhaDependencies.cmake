# Finds the dependencies: LibTorch (PyPI wheel in the project venv, else Debian's
# libtorch-dev), sentencepiece, PCRE2 and utf8proc (pkg-config), nlohmann_json, CLI11, spdlog.

# --- LibTorch -----------------------------------------------------------------
set(DHA_PYTHON "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python of the project venv that holds the torch wheel (if any)")
if(NOT Torch_DIR AND EXISTS "${DHA_PYTHON}")
  execute_process(
    COMMAND "${DHA_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _dha_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _dha_rc ERROR_QUIET)
  if(_dha_rc EQUAL 0 AND _dha_torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_dha_torch_prefix}")
  endif()
endif()
# The CUDA wheel's TorchConfig looks for nvcc; say where it normally lives.
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CUDA_TOOLKIT_ROOT_DIR /usr/local/cuda CACHE PATH "")
endif()
find_package(Torch REQUIRED)
get_filename_component(DHA_TORCH_LIBRARY_DIR "${TORCH_LIBRARY}" DIRECTORY)

# Which LibTorch and which BLAS: a slow reference BLAS makes matmul ~40x slower,
# so the configure log says what was found.
set(DHA_TORCH_SOURCE "Debian libtorch-dev")
set(DHA_BLAS "unknown")
if(EXISTS "${DHA_PYTHON}" AND DHA_TORCH_LIBRARY_DIR MATCHES "site-packages")
  set(DHA_TORCH_SOURCE "PyPI wheel (${DHA_PYTHON})")
  execute_process(
    COMMAND "${DHA_PYTHON}" -c
      "import torch,re; m=re.search(r'BLAS_INFO=([^,]*)', torch.__config__.show()); print(m.group(1) if m else 'unknown')"
    OUTPUT_VARIABLE DHA_BLAS OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
else()
  foreach(_blas /usr/lib/x86_64-linux-gnu/libblas.so.3 /usr/lib/aarch64-linux-gnu/libblas.so.3)
    if(EXISTS ${_blas})
      get_filename_component(DHA_BLAS "${_blas}" REALPATH)
    endif()
  endforeach()
endif()
message(STATUS "dha: LibTorch ${Torch_VERSION} from ${DHA_TORCH_SOURCE} at ${DHA_TORCH_LIBRARY_DIR}")
message(STATUS "dha: BLAS: ${DHA_BLAS}")
if(DHA_BLAS MATCHES "/blas/libblas")
  message(WARNING "dha: the reference BLAS is active; install libopenblas0-pthread (scripts/setup does).")
endif()

# --- the Debian packages ---------------------------------------------------------
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED sentencepiece)
add_library(dha_sentencepiece INTERFACE)
target_include_directories(dha_sentencepiece INTERFACE ${SENTENCEPIECE_INCLUDE_DIRS})
target_link_libraries(dha_sentencepiece INTERFACE ${SENTENCEPIECE_LINK_LIBRARIES})
# Byte-level BPE: PCRE2 for the pre-tokenizer regexes (\p{L}, lookahead), utf8proc
# for NFC and Unicode categories.
pkg_check_modules(PCRE2 REQUIRED libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED libutf8proc)
add_library(dha_unicode INTERFACE)
target_include_directories(dha_unicode INTERFACE ${PCRE2_INCLUDE_DIRS} ${UTF8PROC_INCLUDE_DIRS})
target_link_libraries(dha_unicode INTERFACE ${PCRE2_LINK_LIBRARIES} ${UTF8PROC_LINK_LIBRARIES})
# Compressed corpora (.gz, .zst), read as they stream (src/data/byte_stream.cpp).
find_package(ZLIB REQUIRED)
pkg_check_modules(ZSTD REQUIRED libzstd)
add_library(dha_compression INTERFACE)
target_include_directories(dha_compression INTERFACE ${ZSTD_INCLUDE_DIRS})
target_link_libraries(dha_compression INTERFACE ZLIB::ZLIB ${ZSTD_LINK_LIBRARIES})

# --- Apache Arrow, for Parquet corpora (src/data/parquet/) -------------------------
# Debian 12 packages no Arrow; the pyarrow wheel ships libarrow, libparquet and
# their headers, used from .venv the way the torch wheel's LibTorch is
# (scripts/setup installs it). Without it the build reads no Parquet, and a
# Parquet input gets an error saying how to get a build that does.
set(DHA_HAVE_PARQUET OFF)
if(EXISTS "${DHA_PYTHON}")
  execute_process(
    COMMAND "${DHA_PYTHON}" -c "import pyarrow as pa; print(pa.get_include()); print(pa.get_library_dirs()[0]); print(pa.__version__)"
    OUTPUT_VARIABLE _dha_pyarrow OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _dha_rc ERROR_QUIET)
  if(_dha_rc EQUAL 0)
    string(REPLACE "\n" ";" _dha_pyarrow "${_dha_pyarrow}")
    list(GET _dha_pyarrow 0 DHA_ARROW_INCLUDE_DIR)
    list(GET _dha_pyarrow 1 DHA_ARROW_LIBRARY_DIR)
    list(GET _dha_pyarrow 2 _dha_pyarrow_version)
    # The wheel has only versioned names (libarrow.so.2600), no libarrow.so link.
    file(GLOB _dha_arrow_libs "${DHA_ARROW_LIBRARY_DIR}/libarrow.so.[0-9]*")
    file(GLOB _dha_parquet_libs "${DHA_ARROW_LIBRARY_DIR}/libparquet.so.[0-9]*")
    if(_dha_arrow_libs AND _dha_parquet_libs AND EXISTS "${DHA_ARROW_INCLUDE_DIR}/parquet/arrow/reader.h")
      list(SORT _dha_arrow_libs)
      list(SORT _dha_parquet_libs)
      list(GET _dha_arrow_libs 0 DHA_ARROW_LIBRARY)
      list(GET _dha_parquet_libs 0 DHA_PARQUET_LIBRARY)
      set(DHA_HAVE_PARQUET ON)
    endif()
  endif()
endif()
if(DHA_HAVE_PARQUET)
  message(STATUS "dha: Parquet via pyarrow ${_dha_pyarrow_version} at ${DHA_ARROW_LIBRARY_DIR}")
else()
  message(STATUS "dha: no pyarrow in ${DHA_PYTHON}: this build reads no Parquet (scripts/setup installs it)")
endif()

set(DHA_WARNINGS -Wall -Wextra -Wno-unused-parameter)
if(DHA_WERROR)
  list(APPEND DHA_WARNINGS -Werror)
endif()
