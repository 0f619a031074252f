// Writes one hostile ELF core of tests/fuzz/hostile_shapes.h, for the benchmark
// (tests/bench/hostile_recover_bench.sh) and for trying a shape by hand:
//
//   make_hostile_core SHAPE BYTES OUT      make_hostile_core --list
//   make_hostile_core --objects SHAPE BYTES OUT   (an input of the python_objects fuzz target)
//
// SHAPE "benign" is the reference: an honest model of about BYTES.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "hostile_shapes.h"
#include "test_util.h"

int main(int argc, char** argv) {
  const auto shapes = mlfx::fuzz::hostile_shapes();
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& s : shapes) std::printf("%-22s %s\n", s.name.c_str(), s.what.c_str());
    return 0;
  }
  const bool objects = argc == 5 && std::string(argv[1]) == "--objects";
  if (objects) ++argv, --argc;
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_hostile_core [--objects] SHAPE BYTES OUT | --list\n");
    return 2;
  }
  const uint64_t bytes = std::strtoull(argv[2], nullptr, 0);
  if (std::string(argv[1]) == "benign") {
    mlfx::testing::write_file(argv[3], mlfx::fuzz::benign_core(bytes));
    return 0;
  }
  for (const auto& s : shapes)
    if (s.name == argv[1]) {
      mlfx::testing::write_file(argv[3], objects ? mlfx::fuzz::hostile_objects_input(s, bytes)
                                                 : mlfx::fuzz::hostile_core(s, bytes));
      return 0;
    }
  std::fprintf(stderr, "make_hostile_core: no shape '%s' (--list)\n", argv[1]);
  return 2;
}
