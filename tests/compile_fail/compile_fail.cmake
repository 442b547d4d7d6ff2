# Compile-fail tests, as fmt's: each case builds one object target (not part of `all`) from
# adapter_views.cpp; CTest passes a case when the build fails with the expected diagnostic, and
# the control when it builds.
set(peft_compile_fail_cases gpu_view_to_cpu_adapter gpu_weight_to_cpu_adapter)
foreach(case control ${peft_compile_fail_cases})
  set(target compile_fail_${case})
  add_library(${target} OBJECT EXCLUDE_FROM_ALL ${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/adapter_views.cpp)
  target_link_libraries(${target} PRIVATE peft::peft)
  target_compile_definitions(${target} PRIVATE PEFT_CASE_${case})
  add_test(NAME compile_fail.${case}
           COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target ${target})
  set_tests_properties(compile_fail.${case} PROPERTIES LABELS compile_fail RESOURCE_LOCK compile_fail)
  if(NOT case STREQUAL "control")
    # Passes only on the expected error, not on any failure (a typo would also fail to build).
    set_tests_properties(compile_fail.${case} PROPERTIES
      PASS_REGULAR_EXPRESSION "no matching (member )?function for call to|no matching constructor")
  endif()
endforeach()
