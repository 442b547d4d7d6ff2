# Builds and runs tests/package/consumer against this peft three ways: find_package after an
# install of this build into a scratch prefix, add_subdirectory and FetchContent of the source
# tree. Each test configures a fresh consumer build, so it also covers peftConfig.cmake.

set(peft_consumer_work "${CMAKE_CURRENT_BINARY_DIR}/package")
# Lists cannot cross add_test's argument list: ";" travels as "|".
string(REPLACE ";" "|" peft_consumer_prefix_path "${CMAKE_PREFIX_PATH}")

foreach(mode IN ITEMS find_package subdirectory fetchcontent)
  add_test(NAME package.${mode}
    COMMAND "${CMAKE_COMMAND}"
      "-DMODE=${mode}"
      "-DPEFT_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
      "-DPEFT_BINARY_DIR=${PROJECT_BINARY_DIR}"
      "-DCONSUMER_DIR=${CMAKE_CURRENT_LIST_DIR}/consumer"
      "-DWORK_DIR=${peft_consumer_work}/${mode}"
      "-DGENERATOR=${CMAKE_GENERATOR}"
      "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}"
      "-DCONFIG=$<CONFIG>"
      "-DPREFIX_PATH=${peft_consumer_prefix_path}"
      "-DEXPECT_USE_BLAS=${PEFT_USE_BLAS}"
      "-DEXPECT_GEMM_PROVIDER=${peft_provider}"
      "-DEXPECT_CUDA=$<IF:$<TARGET_EXISTS:peft_cuda>,ON,OFF>"
      "-DCUDA_COMPILER=${CMAKE_CUDA_COMPILER}"
      -P "${CMAKE_CURRENT_LIST_DIR}/run_consumer.cmake")
  set_tests_properties(package.${mode} PROPERTIES
    LABELS package TIMEOUT 600 ENVIRONMENT "OMP_NUM_THREADS=2")
endforeach()
