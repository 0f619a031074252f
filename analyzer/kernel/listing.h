// What `mlfx ps` and `mlfx maps` show, as JSON (the CLI prints tables from it): the processes
// the kernel's task list holds and, for one, its mappings with how many of their pages are in
// the image, swapped out or absent. Page counts are 4 KiB pages found by walking the process's
// own page tables; nothing is counted that the tables do not say.
#pragma once

#include "kernel/tasks.h"
#include "mlfx/base/json.h"

namespace mlfx::kernel {

// {"present", "in_image", "not_in_image", "swapped", "not_present", "unknown"}
json::Json page_counts_json(const PageCounts& c);

// {"kernel": {phys_base, levels, root, notes}, "processes": [{pid, tgid, ppid, uid, comm,
//  threads, kernel_thread, task, mm, pgd, vmas, pages}], "warnings": [...]}
json::Json process_list(const KernelImage& kernel, Diagnostics& diag);

// {"pid", "comm", "maps": [{start, end, perms, offset, path, vma, pages}], "pages", "warnings"};
// an error when no task has that pid or it is a kernel thread.
Result<json::Json> process_maps(const KernelImage& kernel, int32_t pid, Diagnostics& diag);

}  // namespace mlfx::kernel
