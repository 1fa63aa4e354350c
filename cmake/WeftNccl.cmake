# Locate NCCL 2.28.x with the device API (nccl_device.h).
#
# Search order: -DNCCL_ROOT=..., the nvidia-nccl-cu13 Python package (PyTorch's NCCL, which is
# 2.28.9 for PyTorch 2.11), then the CUDA toolkit. The header and the library must come from the
# same release: 2.28.x gives no ABI guarantee for the device API, and weft also checks
# ncclGetVersion() == NCCL_VERSION_CODE when a World starts.
set(NCCL_ROOT "" CACHE PATH "NCCL installation (holds include/nccl.h and lib/libnccl.so*)")

set(_weft_nccl_hints "")
if(NCCL_ROOT)
  list(APPEND _weft_nccl_hints "${NCCL_ROOT}")
endif()
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_FOUND)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])"
    OUTPUT_VARIABLE _weft_py_nccl OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND EXISTS "${_weft_py_nccl}/include/nccl_device.h"
     AND EXISTS "${_weft_py_nccl}/include/nccl.h")
    # Only a 2.28 release: a newer PyTorch brings a newer NCCL, whose device API weft does not
    # build against; the toolkit's may still be 2.28.
    file(STRINGS "${_weft_py_nccl}/include/nccl.h" _pv REGEX "^#define NCCL_(MAJOR|MINOR) +[0-9]+")
    string(REGEX REPLACE ".*NCCL_MAJOR +([0-9]+).*" "\\1" _pmajor "${_pv}")
    string(REGEX REPLACE ".*NCCL_MINOR +([0-9]+).*" "\\1" _pminor "${_pv}")
    if(_pmajor EQUAL 2 AND _pminor EQUAL 28)
      list(APPEND _weft_nccl_hints "${_weft_py_nccl}")
    else()
      message(STATUS "NCCL: skipping the Python package's (${_pmajor}.${_pminor}, in "
                     "${_weft_py_nccl}): weft needs 2.28.x")
    endif()
  endif()
endif()
list(APPEND _weft_nccl_hints "${CUDAToolkit_LIBRARY_ROOT}" "${CUDAToolkit_TARGET_DIR}")

find_path(NCCL_INCLUDE_DIR nccl_device.h HINTS ${_weft_nccl_hints} PATH_SUFFIXES include
          NO_DEFAULT_PATH)
find_path(NCCL_INCLUDE_DIR nccl_device.h)
if(NOT NCCL_INCLUDE_DIR)
  message(FATAL_ERROR "NCCL >= 2.28 with nccl_device.h not found; pass -DNCCL_ROOT=<dir> "
                      "(e.g. site-packages/nvidia/nccl of the nvidia-nccl-cu13 package)")
endif()
get_filename_component(_weft_nccl_root "${NCCL_INCLUDE_DIR}" DIRECTORY)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS "${_weft_nccl_root}"
             PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
if(NOT NCCL_LIBRARY)
  message(FATAL_ERROR "found ${NCCL_INCLUDE_DIR}/nccl.h but no libnccl beside it in ${_weft_nccl_root}")
endif()

file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _v REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
string(REGEX REPLACE ".*NCCL_MAJOR +([0-9]+).*" "\\1" NCCL_VERSION_MAJOR "${_v}")
string(REGEX REPLACE ".*NCCL_MINOR +([0-9]+).*" "\\1" NCCL_VERSION_MINOR "${_v}")
string(REGEX REPLACE ".*NCCL_PATCH +([0-9]+).*" "\\1" NCCL_VERSION_PATCH "${_v}")
set(NCCL_VERSION "${NCCL_VERSION_MAJOR}.${NCCL_VERSION_MINOR}.${NCCL_VERSION_PATCH}")
if(NOT NCCL_VERSION_MAJOR EQUAL 2 OR NOT NCCL_VERSION_MINOR EQUAL 28)
  message(FATAL_ERROR "weft needs NCCL 2.28.x (device API); found ${NCCL_VERSION} in ${NCCL_INCLUDE_DIR}")
endif()
get_filename_component(WEFT_NCCL_LIBRARY_DIR "${NCCL_LIBRARY}" DIRECTORY)
message(STATUS "NCCL ${NCCL_VERSION}: ${NCCL_INCLUDE_DIR}, ${NCCL_LIBRARY}")

add_library(weft_nccl INTERFACE)
add_library(weft::nccl ALIAS weft_nccl)
target_include_directories(weft_nccl SYSTEM INTERFACE "${NCCL_INCLUDE_DIR}")
target_link_libraries(weft_nccl INTERFACE "${NCCL_LIBRARY}")
# Run from the build tree against the same NCCL that we compiled against.
set(CMAKE_BUILD_RPATH "${WEFT_NCCL_LIBRARY_DIR}")
set(CMAKE_INSTALL_RPATH "${WEFT_NCCL_LIBRARY_DIR}")
