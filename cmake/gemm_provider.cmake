# The provider of the CPU gemm (float and double), a build choice:
#   openblas  cblas_?gemm of OpenBLAS's OpenMP build (Debian: libopenblas-openmp-dev); default
#             when found
#   onednn    dnnl_sgemm of oneDNN (Debian: libdnnl-dev) for float; double, which oneDNN lacks,
#             and LAPACK's QR stay on OpenBLAS when it is found (else Eigen)
#   blis      bli_?gemm of BLIS's OpenMP build (Debian: libblis-openmp-dev); OpenBLAS is not
#             linked beside it (both export the BLAS and cblas symbols), so the QR is Eigen's
#   eigen     Eigen's own product, no BLAS library
# The choice reaches the headers as a compile definition on peft::peft (PEFT_GEMM_PROVIDER_*),
# and PEFT_USE_BLAS is defined when OpenBLAS's cblas and LAPACK are linked. All libraries are
# linked by path and exported so, and peftConfig.cmake checks that they still exist.
#
# Only OpenMP builds: the library's own loops run on OpenMP's threads, and a BLAS with a pthreads
# pool of its own spins against them on the same cores (measured 5-7x slower steps on 2 cores
# with OpenBLAS's pthreads build).
#
# Sets PEFT_GEMM_PROVIDER (cache), peft_provider (its lowercase form), PEFT_USE_BLAS (ON when
# OpenBLAS is linked) and PEFT_LINKED_LIBRARIES (the paths linked, for peftConfig.cmake).

set(peft_multiarch_lib "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
set(peft_multiarch_include "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}")

# OpenBLAS: the OpenMP build's own directory first, then any OpenBLAS with a warning.
find_library(PEFT_OPENBLAS_LIBRARY openblas
  PATHS ${peft_multiarch_lib}/openblas-openmp NO_DEFAULT_PATH)
find_path(PEFT_CBLAS_INCLUDE_DIR cblas.h
  PATHS ${peft_multiarch_include}/openblas-openmp NO_DEFAULT_PATH)
if(NOT (PEFT_OPENBLAS_LIBRARY AND PEFT_CBLAS_INCLUDE_DIR))
  unset(PEFT_OPENBLAS_LIBRARY CACHE)
  unset(PEFT_CBLAS_INCLUDE_DIR CACHE)
  set(BLA_VENDOR OpenBLAS)
  find_package(BLAS QUIET)
  find_path(PEFT_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
  if(BLAS_FOUND)
    set(PEFT_OPENBLAS_LIBRARY "${BLAS_LIBRARIES}" CACHE STRING "The OpenBLAS library" FORCE)
    message(WARNING "peft: using ${BLAS_LIBRARIES}; if it is OpenBLAS's pthreads build, its threads "
                    "compete with OpenMP's: install libopenblas-openmp-dev")
  endif()
endif()
if(PEFT_OPENBLAS_LIBRARY AND PEFT_CBLAS_INCLUDE_DIR)
  set(peft_openblas_found TRUE)
  set(peft_default_provider openblas)
else()
  set(peft_openblas_found FALSE)
  set(peft_default_provider eigen)
endif()

# PEFT_USE_BLAS=ON/OFF, the option before PEFT_GEMM_PROVIDER, still works as an alias of
# openblas/eigen when no provider is cached yet.
if(DEFINED CACHE{PEFT_USE_BLAS})
  if(PEFT_USE_BLAS)
    set(peft_alias_provider openblas)
  else()
    set(peft_alias_provider eigen)
  endif()
  if(NOT DEFINED CACHE{PEFT_GEMM_PROVIDER})
    message(DEPRECATION "peft: PEFT_USE_BLAS is replaced by -DPEFT_GEMM_PROVIDER="
                        "${peft_alias_provider}")
    set(PEFT_GEMM_PROVIDER ${peft_alias_provider} CACHE STRING "" FORCE)
  elseif(NOT PEFT_GEMM_PROVIDER STREQUAL peft_alias_provider)
    message(WARNING "peft: PEFT_USE_BLAS=${PEFT_USE_BLAS} ignored, PEFT_GEMM_PROVIDER is "
                    "${PEFT_GEMM_PROVIDER}")
  endif()
  unset(PEFT_USE_BLAS CACHE)
endif()

set(PEFT_GEMM_PROVIDER ${peft_default_provider} CACHE STRING
    "The CPU gemm's library: openblas, onednn, blis or eigen")
set_property(CACHE PEFT_GEMM_PROVIDER PROPERTY STRINGS openblas onednn blis eigen)
string(TOLOWER "${PEFT_GEMM_PROVIDER}" peft_provider)
if(NOT peft_provider MATCHES "^(openblas|onednn|blis|eigen)$")
  message(FATAL_ERROR "PEFT_GEMM_PROVIDER is '${PEFT_GEMM_PROVIDER}', expected openblas, onednn, "
                      "blis or eigen")
endif()

set(PEFT_USE_BLAS OFF)
set(PEFT_LINKED_LIBRARIES)

if(peft_provider STREQUAL "openblas" AND NOT peft_openblas_found)
  message(FATAL_ERROR "PEFT_GEMM_PROVIDER=openblas but no OpenBLAS with cblas.h was found "
                      "(Debian: libopenblas-openmp-dev)")
endif()
if(peft_openblas_found AND peft_provider MATCHES "^(openblas|onednn)$")
  set(PEFT_USE_BLAS ON)
  target_link_libraries(peft INTERFACE ${PEFT_OPENBLAS_LIBRARY})
  target_include_directories(peft SYSTEM INTERFACE ${PEFT_CBLAS_INCLUDE_DIR})
  target_compile_definitions(peft INTERFACE PEFT_USE_BLAS=1)
  list(APPEND PEFT_LINKED_LIBRARIES ${PEFT_OPENBLAS_LIBRARY})
endif()

if(peft_provider STREQUAL "onednn")
  find_library(PEFT_DNNL_LIBRARY dnnl)
  find_path(PEFT_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.h)
  if(NOT (PEFT_DNNL_LIBRARY AND PEFT_DNNL_INCLUDE_DIR))
    message(FATAL_ERROR "PEFT_GEMM_PROVIDER=onednn but no oneDNN was found (Debian: libdnnl-dev)")
  endif()
  target_link_libraries(peft INTERFACE ${PEFT_DNNL_LIBRARY})
  target_include_directories(peft SYSTEM INTERFACE ${PEFT_DNNL_INCLUDE_DIR})
  list(APPEND PEFT_LINKED_LIBRARIES ${PEFT_DNNL_LIBRARY})
  if(NOT PEFT_USE_BLAS)
    message(WARNING "peft: no OpenBLAS found; double gemm and QR fall back to Eigen")
  endif()
elseif(peft_provider STREQUAL "blis")
  find_library(PEFT_BLIS_LIBRARY blis PATHS ${peft_multiarch_lib}/blis-openmp NO_DEFAULT_PATH)
  find_path(PEFT_BLIS_INCLUDE_DIR blis.h
    PATHS ${peft_multiarch_include}/blis-openmp NO_DEFAULT_PATH)
  if(NOT (PEFT_BLIS_LIBRARY AND PEFT_BLIS_INCLUDE_DIR))
    message(FATAL_ERROR "PEFT_GEMM_PROVIDER=blis but BLIS's OpenMP build was not found "
                        "(Debian: libblis-openmp-dev)")
  endif()
  target_link_libraries(peft INTERFACE ${PEFT_BLIS_LIBRARY})
  target_include_directories(peft SYSTEM INTERFACE ${PEFT_BLIS_INCLUDE_DIR})
  list(APPEND PEFT_LINKED_LIBRARIES ${PEFT_BLIS_LIBRARY})
endif()

if(NOT peft_provider STREQUAL "eigen")
  string(TOUPPER "${peft_provider}" peft_provider_macro)
  target_compile_definitions(peft INTERFACE PEFT_GEMM_PROVIDER_${peft_provider_macro}=1)
endif()
message(STATUS "peft: PEFT_GEMM_PROVIDER=${peft_provider}, OpenBLAS linked: ${PEFT_USE_BLAS} "
               "(${PEFT_LINKED_LIBRARIES})")
