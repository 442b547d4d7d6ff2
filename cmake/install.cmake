# Install rules and the package files that let consumers write find_package(peft).
# Included from the top-level CMakeLists.txt when PEFT_INSTALL is on.

include(CMakePackageConfigHelpers)

# Header-only: nothing depends on the architecture, so the package goes to share/.
set(PEFT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/peft" CACHE STRING
    "Where to install peftConfig.cmake and peftTargets.cmake, relative to the prefix")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/peft" TYPE INCLUDE
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.inl" PATTERN "*.h" PATTERN "*.cuh")
# What peftConfig.cmake must find again for the consumer: see peftConfig.cmake.in.
set(peft_export_targets peft)
set(peft_config_cuda FALSE)
if(TARGET peft_cuda)  # cmake/cuda.cmake: peft::cuda
  list(APPEND peft_export_targets peft_cuda)
  set(peft_config_cuda TRUE)
endif()
install(TARGETS ${peft_export_targets} EXPORT peftTargets)
install(EXPORT peftTargets NAMESPACE peft:: DESTINATION "${PEFT_INSTALL_CMAKEDIR}")

# The config and version files sit next to the build-tree export, so the build tree is a
# package too: find_package(peft) with peft_DIR pointing at the build directory works.
export(EXPORT peftTargets NAMESPACE peft:: FILE "${PROJECT_BINARY_DIR}/peftTargets.cmake")
configure_package_config_file("${CMAKE_CURRENT_LIST_DIR}/peftConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/peftConfig.cmake" INSTALL_DESTINATION "${PEFT_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/peftConfigVersion.cmake"
  COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/peftConfig.cmake"
  "${PROJECT_BINARY_DIR}/peftConfigVersion.cmake" DESTINATION "${PEFT_INSTALL_CMAKEDIR}")
