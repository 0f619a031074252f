# A dropped Result or Status fails the build: the same file compiles as it is and fails with
# each kind of dropped result. cmake -DCXX=... -DINCLUDE=... -DSOURCE=... -P check.cmake
set(flags -std=c++20 -fsyntax-only -Werror=unused-result -I${INCLUDE} ${SOURCE})
execute_process(COMMAND ${CXX} ${flags} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the control (no dropped result) does not compile:\n${err}")
endif()
foreach(kind DROP_STATUS DROP_RESULT)
  execute_process(COMMAND ${CXX} -D${kind} ${flags} RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "ignoring return(ed)? value")
    message(FATAL_ERROR "${kind}: a dropped result compiled (or failed for another reason):\n${err}")
  endif()
endforeach()
message(STATUS "dropped Status and Result fail the build; an explicit (void) compiles")
