# Issue 4: an upload survives a cut link between two network namespaces (a veth pair, cut by a
# silent drop and by link down) and resumes when it returns. Needs root and iproute2; exits 77
# (skipped) otherwise. Included from tests/intake/CMakeLists.txt.
add_test(NAME intake_netns_cut_link
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/netns_cut_link_test.sh ${PROJECT_BINARY_DIR})
set_tests_properties(intake_netns_cut_link PROPERTIES
                     LABELS "slow;intake;netns" SKIP_RETURN_CODE 77 TIMEOUT 180)
