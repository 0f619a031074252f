# Runs one fuzz target for CTest: cmake -DMODE=libfuzzer|replay -DTARGET=... -DFUZZER=...
#   -DMAKE_CORPUS=... -DWORK_DIR=... [-DREGRESSIONS=dir] [-DDICT=file] [-DSECONDS=n]
#   [-DROUNDS=n] -P run_fuzz.cmake
#
# WORK_DIR is recreated: seeds/ (from make_corpus), corpus/ (a copy of the seeds that
# libFuzzer grows), artifacts/ (crash, leak and timeout reproducers). REGRESSIONS, when it
# exists, holds inputs that once failed; they are run too, read-only.
foreach(v MODE TARGET FUZZER MAKE_CORPUS WORK_DIR)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "run_fuzz.cmake: ${v} is not set")
  endif()
endforeach()
if(NOT SECONDS)
  set(SECONDS 60)
endif()
if(NOT ROUNDS)
  set(ROUNDS 1)
endif()

# Sanitizer reports must end the run (UBSan only prints by default); callers may override.
if(NOT DEFINED ENV{UBSAN_OPTIONS})
  set(ENV{UBSAN_OPTIONS} "halt_on_error=1:print_stacktrace=1")
endif()
if(NOT DEFINED ENV{ASAN_OPTIONS})
  set(ENV{ASAN_OPTIONS} "abort_on_error=1:detect_leaks=1:strict_string_checks=1")
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}/seeds" "${WORK_DIR}/corpus" "${WORK_DIR}/artifacts")

execute_process(COMMAND "${MAKE_CORPUS}" --${TARGET} "${WORK_DIR}/seeds"
                INPUT_FILE /dev/null RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "make_corpus failed (${rc})")
endif()
file(GLOB seeds "${WORK_DIR}/seeds/*")
list(LENGTH seeds nseeds)
if(nseeds EQUAL 0)
  message(FATAL_ERROR "make_corpus wrote no seeds for ${TARGET}")
endif()
file(COPY ${seeds} DESTINATION "${WORK_DIR}/corpus")

set(extra_dirs "")
if(REGRESSIONS AND IS_DIRECTORY "${REGRESSIONS}")
  list(APPEND extra_dirs "${REGRESSIONS}")
endif()

if(MODE STREQUAL "libfuzzer")
  # Regression inputs run first, one by one and whole: in a corpus directory libFuzzer would
  # cut them to its -max_len (at most 1 MiB) and might miss the failure.
  if(extra_dirs)
    file(GLOB_RECURSE regressions LIST_DIRECTORIES false "${REGRESSIONS}/*")
    if(regressions)
      list(LENGTH regressions nreg)
      message(STATUS "${TARGET}: running ${nreg} regression input(s)")
      execute_process(COMMAND "${FUZZER}" -rss_limit_mb=2048 -timeout=10
                              -artifact_prefix=${WORK_DIR}/artifacts/ ${regressions}
                      WORKING_DIRECTORY "${WORK_DIR}" INPUT_FILE /dev/null RESULT_VARIABLE rc)
      if(NOT rc EQUAL 0)
        message(FATAL_ERROR "${TARGET}: a regression input fails (${rc}): ${regressions}")
      endif()
    endif()
  endif()
  set(args -max_total_time=${SECONDS} -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
           -artifact_prefix=${WORK_DIR}/artifacts/)
  if(DICT)
    list(APPEND args -dict=${DICT})
  endif()
  message(STATUS "${TARGET}: ${nseeds} seeds, fuzzing for ${SECONDS} s")
  execute_process(COMMAND "${FUZZER}" ${args} "${WORK_DIR}/corpus" ${extra_dirs}
                  WORKING_DIRECTORY "${WORK_DIR}" INPUT_FILE /dev/null RESULT_VARIABLE rc)
elseif(MODE STREQUAL "replay")
  message(STATUS "${TARGET}: ${nseeds} seeds, replaying with ${ROUNDS} round(s) of mutations")
  execute_process(COMMAND "${FUZZER}" -rounds=${ROUNDS} -artifact=${WORK_DIR}/artifacts/crash
                          "${WORK_DIR}/corpus" ${extra_dirs}
                  WORKING_DIRECTORY "${WORK_DIR}" INPUT_FILE /dev/null RESULT_VARIABLE rc)
else()
  message(FATAL_ERROR "run_fuzz.cmake: unknown MODE ${MODE}")
endif()

if(NOT rc EQUAL 0)
  file(GLOB artifacts "${WORK_DIR}/artifacts/*")
  message(FATAL_ERROR "${TARGET}: the fuzz target failed (${rc}); reproducers: ${artifacts}\n"
                      "Rerun one with: ${FUZZER} <reproducer>")
endif()
