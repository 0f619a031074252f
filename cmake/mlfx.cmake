# mlfx_test(NAME SOURCES... LIBS ...): one GoogleTest binary per component, registered with CTest.
function(mlfx_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60
                       PROPERTIES LABELS "${T_LABELS}"
                                  ENVIRONMENT "MLFX_BIN=${PROJECT_BINARY_DIR}/analyzer")
endfunction()
