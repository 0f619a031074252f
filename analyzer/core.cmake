# The analyzer's parsing core: address-space layers, the frontends that read through them and
# the kernel structures of whole-memory images (mlfx_kernel).
# Included by analyzer/CMakeLists.txt and, in MLFX_FUZZ builds (which skip the rest of the
# analyzer: CLI, exporters, recovery), by the top-level CMakeLists.txt for tests/fuzz.
set(_mlfx_analyzer_dir ${CMAKE_CURRENT_LIST_DIR})

# Address spaces: files, segmented layers, ELF cores, LiME images, sysroot files under a core,
# CUDA GPU core dumps.
add_library(mlfx_layers ${_mlfx_analyzer_dir}/layers/layer.cc ${_mlfx_analyzer_dir}/layers/file_layer.cc
            ${_mlfx_analyzer_dir}/layers/segmented_layer.cc ${_mlfx_analyzer_dir}/layers/elf_core_layer.cc
            ${_mlfx_analyzer_dir}/layers/sysroot_layer.cc ${_mlfx_analyzer_dir}/layers/lime_layer.cc
            ${_mlfx_analyzer_dir}/layers/cuda_core_layer.cc)
target_include_directories(mlfx_layers PUBLIC ${_mlfx_analyzer_dir})
# ISA-L inflates gzip-compressed GPU core dumps (about 3x zlib's speed); GLOBAL: the exporters
# and the tests use it too.
find_package(PkgConfig REQUIRED)
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET GLOBAL libisal)
target_link_libraries(mlfx_layers PUBLIC mlfx_base mlfx_cudacore PRIVATE PkgConfig::ISAL)

# Whole-memory captures: the physical image, its context, processes rebuilt from their pagemaps.
add_library(mlfx_physical ${_mlfx_analyzer_dir}/physical/physical_image.cc)
target_link_libraries(mlfx_physical PUBLIC mlfx_layers mlfx_crypto)

# Frontends: interpret bytes read through a layer.
add_library(mlfx_frontends ${_mlfx_analyzer_dir}/frontends/elf/loaded_elf.cc
            ${_mlfx_analyzer_dir}/frontends/cpython/layout.cc
            ${_mlfx_analyzer_dir}/frontends/cpython/python_runtime.cc
            ${_mlfx_analyzer_dir}/frontends/cpython/python_objects.cc
            ${_mlfx_analyzer_dir}/frontends/torch/tensor_reader.cc
            ${_mlfx_analyzer_dir}/frontends/torch/module_walker.cc)
target_link_libraries(mlfx_frontends PUBLIC mlfx_layers)

# Processes in a whole-memory image from the captured BTF and kallsyms alone: BTF, kallsyms,
# x86-64 page tables, the kernel's task list and VMAs (mlfx ps, mlfx maps).
add_library(mlfx_kernel ${_mlfx_analyzer_dir}/kernel/btf.cc ${_mlfx_analyzer_dir}/kernel/kallsyms.cc
            ${_mlfx_analyzer_dir}/kernel/page_table.cc ${_mlfx_analyzer_dir}/kernel/kernel_space.cc
            ${_mlfx_analyzer_dir}/kernel/tasks.cc ${_mlfx_analyzer_dir}/kernel/listing.cc)
target_link_libraries(mlfx_kernel PUBLIC mlfx_layers)
