#include "capture/physical/physical_source.h"

#include <sys/stat.h>

#include "mlfx/base/file.h"

namespace mlfx::agent::physical {

namespace {

uint64_t ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  if (b <= a) return 0;
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count());
}

json::Json missing_json(const std::vector<MissingRange>& ranges) {
  json::Json a = json::Json::array();
  for (const MissingRange& m : ranges) a.push_back({{"start", m.range.start}, {"end", m.range.end}, {"reason", m.reason}});
  return a;
}

uint64_t total(const std::vector<PhysRange>& ranges) {
  uint64_t n = 0;
  for (const PhysRange& r : ranges) n += r.size();
  return n;
}

bool btf_present() {
  struct stat st {};
  return ::stat(kBtfPath, &st) == 0;
}

}  // namespace

Status PhysicalSource::prepare(const std::string& default_module_file, const std::string& what) {
  // Everything that can be refused is refused now, before anything is frozen or loaded.
  MLFX_TRY(targets_.check());
  MLFX_ASSIGN(kernel_, read_kernel_facts());
  MLFX_ASSIGN(iomem_, read_iomem());
  const std::string path = options_.module_path.empty() ? dkms_module_path(default_module_file) : options_.module_path;
  MLFX_ASSIGN(module_, open_module_file(path, what));
  return {};
}

uint64_t PhysicalSource::expected_bytes() const { return total(all_system_ram(iomem_)); }

Status PhysicalSource::freeze() {
  t_freeze_ = Clock::now();
  khugepaged_.pause();  // before the pagemaps are read: fewer pages move while the image is read
  MLFX_TRY(before_freeze());
  if (!targets_.empty()) MLFX_TRY(targets_.freeze(options_.stop_timeout, options_.freeze_threads));
  frozen_ = true;
  t_frozen_ = Clock::now();
  return {};
}

Status PhysicalSource::read(bundle::BundleWriter& bundle, bool show_progress) {
  if (!frozen_) return fail(Errc::kInvalidArgument, "physical source: read before freeze");
  MLFX_TRY(targets_.record(kernel_.page_size));
  t_recorded_ = Clock::now();
  MLFX_TRY(bundle.begin_stream("memory", memory_stream_source()));
  std::optional<Progress> bar;
  if (show_progress) bar.emplace("capturing physical memory (" + name() + ")", expected_bytes());
  Status st = read_image(bundle, bar ? &*bar : nullptr);
  Status released = release_module();
  if (!st) return st;
  MLFX_TRY(released);
  MLFX_TRY(targets_.settle(kernel_.page_size));  // still frozen: pages the kernel moved meanwhile
  if (bar) bar->finish();
  image_read_ = true;
  t_image_done_ = Clock::now();
  return {};
}

Status PhysicalSource::thaw() {
  Status st = targets_.thaw();
  Status released = release_module();  // a failed read may leave the module loaded
  if (frozen_) {
    frozen_ = false;
    t_thawed_ = Clock::now();
    if (st && image_read_) targets_.read_build_ids();
  }
  // Not a failed capture: the context records it, and the CLI says how to restore the mode.
  (void)khugepaged_.resume();
  MLFX_TRY(st);
  return released;
}

void PhysicalSource::stream_sealed(const bundle::StreamInfo& stream) {
  t_sealed_ = Clock::now();
  image_sha256_ = stream.sha256;
}

Status PhysicalSource::write_side_streams(bundle::BundleWriter& bundle) {
  if (!targets_.empty()) {
    auto proc_files = [this](const char* leaf) {  // the stream's source: "/proc/PID/LEAF,..."
      std::string files;
      for (pid_t pid : targets_.pids()) files += (files.empty() ? "" : ",") + ("/proc/" + std::to_string(pid) + "/" + leaf);
      return files;
    };
    MLFX_TRY(bundle.begin_stream("pagemap", proc_files("pagemap")));
    MLFX_TRY(bundle.write(targets_.pagemap_stream()));
    MLFX_TRY(bundle.end_stream());
    if (!targets_.moved_stream().empty()) {
      MLFX_TRY(bundle.begin_stream("moved", proc_files("mem")));
      MLFX_TRY(bundle.write(targets_.moved_stream()));
      MLFX_TRY(bundle.end_stream());
    }
  }
  if (std::optional<std::string> kallsyms = read_kallsyms(&kallsyms_why_not_)) {
    MLFX_TRY(bundle.begin_stream("kallsyms", kKallsymsPath));
    MLFX_TRY(bundle.write(as_bytes(*kallsyms)));
    MLFX_TRY(bundle.end_stream());
    kallsyms_written_ = true;
  }
  if (btf_present()) {
    MLFX_ASSIGN(File btf, File::open_read(kBtfPath));
    MLFX_TRY(bundle.begin_stream("btf", kBtfPath));
    MLFX_TRY(bundle.write_from(btf, nullptr));
    MLFX_TRY(bundle.end_stream());
    btf_written_ = true;
  }
  return {};
}

json::Json PhysicalSource::manifest_context() const {
  return {{"source", name()},
          {"kernel_release", kernel_.release},
          {"ram_bytes", expected_bytes()},
          {"image_bytes", image_stream_bytes_},
          {"image_ranges", image_ranges_.size()},
          {"unreadable_ranges", unreadable_.size()},
          {"pids", targets_.pids()}};
}

json::Json PhysicalSource::context() const {
  json::Json kernel = {{"banner", kernel_.banner},       {"release", kernel_.release},
                       {"machine", kernel_.machine},     {"page_size", kernel_.page_size},
                       {"btf", btf_written_},            {"kallsyms", kallsyms_written_}};
  if (!kallsyms_written_ && !kallsyms_why_not_.empty()) kernel["kallsyms_missing"] = kallsyms_why_not_;
  json::Json c = {
      {"source", name()},
      {"kernel", std::move(kernel)},
      {"iomem", iomem_json(iomem_)},
      {"ranges", ranges_json(image_ranges_)},
      {"unreadable", missing_json(unreadable_)},
      {"zero_filled", missing_json(zero_filled_)},
      {"image", {{"stream_bytes", image_stream_bytes_}, {"data_bytes", image_data_bytes_},
                 {"range_headers", image_headers_}, {"system_ram_bytes", expected_bytes()}}},
      {"module", {{"path", module_.path}, {"sha256", module_.sha256}, {"name", module_.name},
                  {"vermagic", module_.vermagic}, {"size", module_.size}, {"parameters", module_parameters()}}},
      {"processes", targets_.processes_json()},
      {"smear_reduction", {{"khugepaged", khugepaged_.to_json()}}},
      {"timings", {{"freeze_ms", ms_between(t_freeze_, t_frozen_)},
                   {"record_ms", ms_between(t_frozen_, t_recorded_)},
                   {"capture_ms", ms_between(t_recorded_, t_image_done_)},
                   {"frozen_ms", targets_.empty() ? 0 : ms_between(t_frozen_, t_thawed_)},
                   {"sealed_after_thaw_ms", ms_between(t_thawed_, t_sealed_)}}}};
  json::Json own = source_context();
  for (auto& [k, v] : own.items()) {
    if (k == "module") c["module"].update(v);
    else c[k] = v;
  }
  return c;
}

json::Json PhysicalSource::acquisition() const {
  const json::Json ctx = context();
  json::Json a = {{"source", name()},
                  {"method", method()},
                  {"module", {{"path", module_.path}, {"sha256", module_.sha256}, {"name", module_.name}}},
                  {"kernel_release", kernel_.release},
                  {"pids", targets_.pids()},
                  {"image_bytes", image_stream_bytes_},
                  {"ram_bytes", expected_bytes()},
                  {"unreadable_ranges", unreadable_.size()},
                  {"zero_filled_ranges", zero_filled_.size()},
                  {"complete", image_read_}};
  if (ctx.contains("digest")) a["digest"] = ctx["digest"];
  for (const auto& [k, v] : ctx["timings"].items()) a[k] = v;
  return a;
}

}  // namespace mlfx::agent::physical
