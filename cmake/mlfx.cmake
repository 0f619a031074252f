# Test tiers, one CTest label each (`ctest -L unit` is the quick loop):
#   unit         a library in the test's own process: no program of ours started, no victim
#   integration  real binaries, real victim processes, real TLS on loopback
#   slow         multi-GiB data or minutes of work
set(MLFX_TEST_TIERS unit integration slow)

# mlfx_test(NAME TIER unit|integration|slow SOURCES... LIBS ... [LABELS ...] [COST N]): one
# GoogleTest binary per component, registered with CTest.
function(mlfx_test name)
  cmake_parse_arguments(T "" "COST;TIER" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_TIER IN_LIST MLFX_TEST_TIERS)
    message(FATAL_ERROR "mlfx_test(${name}): TIER must be one of ${MLFX_TEST_TIERS}")
  endif()
  list(PREPEND T_LABELS ${T_TIER})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  set(props ENVIRONMENT "MLFX_BIN=${PROJECT_BINARY_DIR}/analyzer")
  if(T_COST)  # a long test: ctest starts it first, beside the short ones
    list(APPEND props COST ${T_COST})
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES ${props})
  # Labels, all of them, on every discovered test: gtest_discover_tests' PROPERTIES is a flat
  # key/value list that cannot carry a list value ("LABELS unit agent" made "agent" a key).
  # Read by CTest after the discovered tests (their names are in ${name}_TESTS).
  set(labels_file ${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake)
  file(WRITE ${labels_file} "foreach(t IN LISTS ${name}_TESTS)\n"
                            "  set_tests_properties(\"\${t}\" PROPERTIES LABELS \"${T_LABELS}\")\n"
                            "endforeach()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${labels_file})
endfunction()
