# cmake -P script behind the package.* tests: (install,) configure, build and run the consumer.
# Inputs: MODE, PEFT_SOURCE_DIR, PEFT_BINARY_DIR, CONSUMER_DIR, WORK_DIR, GENERATOR,
# CXX_COMPILER, CONFIG, PREFIX_PATH ("|"-separated), EXPECT_USE_BLAS, EXPECT_GEMM_PROVIDER,
# EXPECT_CUDA, CUDA_COMPILER.

function(run)
  execute_process(COMMAND ${ARGV} COMMAND_ECHO STDOUT RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "package.${MODE}: command failed (${result})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
string(REPLACE "|" ";" prefix_path "${PREFIX_PATH}")
set(options -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DPEFT_CONSUMER_MODE=${MODE}
            -DPEFT_EXPECT_USE_BLAS=${EXPECT_USE_BLAS} -DPEFT_EXPECT_CUDA=${EXPECT_CUDA}
            -DPEFT_EXPECT_GEMM_PROVIDER=${EXPECT_GEMM_PROVIDER})
set(config_args)
if(CONFIG)
  list(APPEND options -DCMAKE_BUILD_TYPE=${CONFIG})
  set(config_args --config ${CONFIG})
endif()

if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" --install "${PEFT_BINARY_DIR}" --prefix "${prefix}" ${config_args})
  list(PREPEND prefix_path "${prefix}")
  list(APPEND options "-DPEFT_EXPECT_PREFIX=${prefix}")
else()  # peft is configured inside the consumer, with the options of this build
  list(APPEND options "-DPEFT_SOURCE_DIR=${PEFT_SOURCE_DIR}"
                      -DPEFT_GEMM_PROVIDER=${EXPECT_GEMM_PROVIDER} -DPEFT_ENABLE_CUDA=${EXPECT_CUDA})
  if(EXPECT_CUDA AND CUDA_COMPILER)
    list(APPEND options "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
  endif()
endif()

# The prefix path travels in the environment, where a list needs no escaping.
if(DEFINED ENV{CMAKE_PREFIX_PATH})
  cmake_path(CONVERT "$ENV{CMAKE_PREFIX_PATH}" TO_CMAKE_PATH_LIST env_prefix_path)
  list(APPEND prefix_path ${env_prefix_path})
endif()
cmake_path(CONVERT "${prefix_path}" TO_NATIVE_PATH_LIST native_prefix_path)
set(ENV{CMAKE_PREFIX_PATH} "${native_prefix_path}")

run("${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}" ${options})
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build" ${config_args})

foreach(dir IN ITEMS "${WORK_DIR}/build" "${WORK_DIR}/build/${CONFIG}")
  foreach(exe IN ITEMS "${dir}/peft_consumer" "${dir}/peft_consumer.exe")
    if(EXISTS "${exe}" AND NOT IS_DIRECTORY "${exe}")
      run("${exe}")
      return()
    endif()
  endforeach()
endforeach()
message(FATAL_ERROR "package.${MODE}: no peft_consumer was built under ${WORK_DIR}/build")
