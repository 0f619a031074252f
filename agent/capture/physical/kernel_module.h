// Loading and unloading a kernel module for a capture (stock LiME, our mlfx_mem.ko): the file is
// opened once, hashed and inspected (its .modinfo: name, vermagic), and the same descriptor goes
// to finit_module, so the module that runs is the one whose SHA-256 the context records.
#pragma once

#include <cstdint>
#include <string>

#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

// /lib/modules/$(uname -r)/updates/dkms/FILE: where DKMS installs a module for the running kernel.
std::string dkms_module_path(const std::string& file);

struct ModuleFile {
  std::string path;
  std::string sha256;
  std::string name;      // .modinfo name= (what lsmod and delete_module use)
  std::string vermagic;  // .modinfo vermagic=, e.g. "6.1.0-57-amd64 SMP preempt mod_unload modversions "
  uint64_t size = 0;
  File file;             // open, for finit_module
};

// The fields of a module's .modinfo section ("name=lime\0vermagic=...\0"): key -> first value.
Result<std::string> modinfo_field(ByteView elf, const std::string& key);

// Opens, hashes and inspects a module file. `what` names it in errors ("LiME", "mlfx_mem").
// Refuses a compressed module (.ko.xz, .ko.zst) with what to do, and one built for another
// kernel (vermagic) before anything is loaded.
Result<ModuleFile> open_module_file(const std::string& path, const std::string& what);

// finit_module (init_module where the kernel has no finit_module). Blocks while the module's
// init runs (LiME's init is the whole dump). On failure the message says why and what to do;
// `already_loaded_advice` is added when a module of that name is loaded already (EEXIST).
Status load_module(const ModuleFile& m, const std::string& params, const std::string& already_loaded_advice);

// delete_module(name), retried for a few seconds while the module is busy.
Status unload_module(const std::string& name);

bool module_loaded(const std::string& name);

// What /sys/module/NAME says of the loaded module: coresize, initsize, taint, refcnt.
json::Json module_sysfs_facts(const std::string& name);

}  // namespace mlfx::agent::physical
