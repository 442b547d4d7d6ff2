# The CUDA backend: target peft::cuda (INTERFACE) when a CUDA compiler is found or requested.
#   PEFT_ENABLE_CUDA = AUTO (default: on when CMake finds nvcc), ON (required), OFF.

set(PEFT_ENABLE_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE PEFT_ENABLE_CUDA PROPERTY STRINGS AUTO ON OFF)

set(PEFT_CUDA OFF)
if(NOT PEFT_ENABLE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # enable_language(CUDA) would pick the compiler's default architecture (75 here), and
    # "native" fails on a machine without a GPU: choose A100 and H100 first, when we are the
    # top-level project and the user did not choose.
    if(PEFT_IS_TOP_LEVEL AND NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(PEFT_CUDA ON)
  elseif(PEFT_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PEFT_ENABLE_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "peft: CUDA backend ${PEFT_CUDA}")

if(PEFT_CUDA)
  add_library(peft_cuda INTERFACE)
  add_library(peft::cuda ALIAS peft_cuda)
  set_target_properties(peft_cuda PROPERTIES EXPORT_NAME cuda)
  # cuSOLVER: the QR and SVD of truncated_svd (backend/cuda/svd.cuh).
  target_link_libraries(peft_cuda INTERFACE peft CUDA::cudart CUDA::cublas CUDA::cusparse
                                             CUDA::cusolver)
  # cxx_std_20 on peft does not reach .cu files. CMake 3.25 does not know cuda_std_20 for nvcc
  # (any target with .cu sources then fails to generate): pass the flag itself there.
  if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
    target_compile_features(peft_cuda INTERFACE cuda_std_20)
  else()
    target_compile_options(peft_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  endif()
  # Host code in .cu files uses the CPU backend's OpenMP loops too (e.g. host-side accumulation).
  target_compile_options(peft_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fopenmp>)
endif()
