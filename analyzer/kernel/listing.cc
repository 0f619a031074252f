#include "kernel/listing.h"

namespace mlfx::kernel {
namespace {

json::Json kernel_json(const KernelImage& k) {
  return {{"phys_base", k.space().phys_base()},
          {"levels", k.space().levels()},
          {"root", k.space().root()},
          {"page_offset_base", k.space().page_offset_base()},
          {"notes", k.notes()}};
}

json::Json warnings_json(const Diagnostics& diag) {
  json::Json w = diag.warnings();
  if (diag.dropped()) w.push_back(std::to_string(diag.dropped()) + " more warning(s) not kept");
  return w;
}

const Task* find_task(const std::vector<Task>& tasks, int32_t pid) {
  for (const Task& t : tasks)
    if (t.pid == pid && t.tgid == pid) return &t;
  return nullptr;
}

}  // namespace

json::Json page_counts_json(const PageCounts& c) {
  return {{"present", c.in_image + c.not_in_image}, {"in_image", c.in_image}, {"not_in_image", c.not_in_image},
          {"swapped", c.swapped}, {"not_present", c.not_present}, {"unknown", c.unknown}};
}

json::Json process_list(const KernelImage& kernel, Diagnostics& diag) {
  json::Json rows = json::Json::array();
  for (const Task& t : kernel.tasks(diag)) {
    json::Json row = {{"pid", t.pid},
                      {"tgid", t.tgid},
                      {"ppid", t.ppid},
                      {"uid", t.uid},
                      {"comm", t.comm},
                      {"threads", t.threads},
                      {"kernel_thread", t.mm == 0},
                      {"task", t.address},
                      {"mm", t.mm},
                      {"pgd", t.pgd}};
    if (t.mm) {
      PageCounts pages;
      const std::vector<Vma> vmas = kernel.vmas(t, diag);
      if (auto space = kernel.user_space(t)) {
        for (const Vma& v : vmas) pages += KernelImage::count_pages(**space, v.start, v.end, diag);
        row["pages"] = page_counts_json(pages);
      } else {
        diag.warn(space.error().to_string());
      }
      row["vmas"] = vmas.size();
    }
    rows.push_back(std::move(row));
  }
  return {{"kernel", kernel_json(kernel)}, {"processes", std::move(rows)}, {"warnings", warnings_json(diag)}};
}

Result<json::Json> process_maps(const KernelImage& kernel, int32_t pid, Diagnostics& diag) {
  const std::vector<Task> tasks = kernel.tasks(diag);
  const Task* t = find_task(tasks, pid);
  if (!t)
    return fail(Errc::kNotFound, "no process with pid " + std::to_string(pid) + " on the kernel's task list (" +
                                     std::to_string(tasks.size()) + " found; see mlfx ps)");
  MLFX_ASSIGN(auto space, kernel.user_space(*t));
  json::Json maps = json::Json::array();
  PageCounts total;
  for (const Vma& v : kernel.vmas(*t, diag)) {
    const PageCounts c = KernelImage::count_pages(*space, v.start, v.end, diag);
    total += c;
    maps.push_back({{"start", v.start}, {"end", v.end}, {"perms", v.perms()}, {"flags", v.flags},
                    {"offset", v.file ? v.pgoff * kPageSize : 0}, {"path", v.path}, {"vma", v.address}, {"pages", page_counts_json(c)}});
  }
  return json::Json{{"pid", t->pid},
                    {"comm", t->comm},
                    {"kernel", kernel_json(kernel)},
                    {"maps", std::move(maps)},
                    {"pages", page_counts_json(total)},
                    {"warnings", warnings_json(diag)}};
}

}  // namespace mlfx::kernel
