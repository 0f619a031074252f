#include "kernel/kernel_space.h"

#include <cstring>

#include "mlfx/base/bytes.h"

namespace mlfx::kernel {
namespace {

// Physical addresses p (p ≡ offset mod kPhysicalAlign) where the image holds `text`.
std::vector<uint64_t> banner_candidates(const layers::SegmentedLayer& physical, uint64_t offset, std::string_view text) {
  std::vector<uint64_t> found;
  const uint64_t r = offset % kPhysicalAlign;
  for (const layers::Segment& s : physical.segments()) {
    uint64_t p = (s.start & ~(kPhysicalAlign - 1)) + r;
    if (p < s.start) p += kPhysicalAlign;
    for (; p >= s.start && p - s.start + text.size() <= s.size && found.size() < 64; p += kPhysicalAlign) {
      const uint8_t* bytes = physical.view(p, text.size());
      if (bytes && std::memcmp(bytes, text.data(), text.size()) == 0) found.push_back(p);
    }
  }
  return found;
}

// Where the paging depth comes from, before the banner walk confirms it.
int guess_levels(const layers::Layer& physical, const Kallsyms& symbols, uint64_t phys_base,
                 uint64_t& page_offset_base, std::string& why) {
  auto pa = [&](uint64_t v) { return v - kStartKernelMap + phys_base; };
  if (auto sym = symbols.find("page_offset_base")) {
    if (auto v = physical.read_u64(pa(*sym))) page_offset_base = *v;
  }
  if (auto sym = symbols.find("__pgtable_l5_enabled")) {
    if (auto v = physical.read_value<uint32_t>(pa(*sym))) {
      why = std::string("__pgtable_l5_enabled is ") + (*v ? "set" : "clear");
      return *v ? 5 : 4;
    }
  }
  if (page_offset_base != 0) {
    why = "page_offset_base " + hex_address(page_offset_base) + " is " +
          (page_offset_base < 0xffff800000000000ull ? "below" : "in") + " the 4-level kernel half";
    return page_offset_base < 0xffff800000000000ull ? 5 : 4;
  }
  why = "no __pgtable_l5_enabled nor page_offset_base in kallsyms: 4 levels assumed";
  return 4;
}

}  // namespace

Result<KernelSpace> KernelSpace::locate(std::shared_ptr<const layers::SegmentedLayer> physical, const Kallsyms& symbols,
                                        std::string_view banner) {
  while (!banner.empty() && (banner.back() == '\n' || banner.back() == '\0')) banner.remove_suffix(1);
  if (banner.rfind("Linux version ", 0) != 0)
    return fail(Errc::kInvalidArgument, "the kernel banner from the capture's context is missing or does not start "
                                        "with 'Linux version ' (it is /proc/version of the captured kernel)");
  MLFX_ASSIGN(uint64_t banner_va, symbols.require("linux_banner"));
  MLFX_ASSIGN(uint64_t root_va, symbols.require("init_top_pgt"));
  if (banner_va < kStartKernelMap || root_va < kStartKernelMap)
    return fail(Errc::kBadFormat, "kallsyms puts linux_banner or init_top_pgt outside the x86-64 kernel image "
                                  "mapping (not an x86-64 kernel?)");
  const std::vector<uint64_t> candidates = banner_candidates(*physical, banner_va - kStartKernelMap, banner);
  if (candidates.empty())
    return fail(Errc::kNotFound, "the kernel banner is nowhere in the image at linux_banner's offset modulo 2 MiB: "
                                 "the context, kallsyms or image belong to different kernels, or the image lacks the "
                                 "kernel's pages");
  std::string tried;
  for (uint64_t banner_pa : candidates) {
    const uint64_t phys_base = banner_pa - (banner_va - kStartKernelMap);
    KernelSpace ks;
    ks.physical_ = physical;
    ks.phys_base_ = phys_base;
    ks.notes_.push_back("phys_base " + hex_address(phys_base) + ": linux_banner (" + hex_address(banner_va) + ") holds the banner at " +
                        hex_address(banner_pa));
    if (auto sym = symbols.find("phys_base")) {
      auto v = physical->read_u64(ks.image_to_physical(*sym));
      if (!v || *v != phys_base) {
        tried += " " + hex_address(banner_pa) + " (the kernel's phys_base variable disagrees)";
        continue;
      }
      ks.notes_.push_back("the kernel's phys_base variable agrees");
    }
    std::string why;
    const int guessed = guess_levels(*physical, symbols, phys_base, ks.page_offset_base_, why);
    for (int levels : {guessed, guessed == 4 ? 5 : 4}) {
      MLFX_ASSIGN(auto layer, PageTableLayer::create("kernel", physical, ks.image_to_physical(root_va), levels));
      auto t = layer->translate(banner_va);
      if (!t || t->state != PageState::kPresent || t->physical_of(banner_va) != banner_pa) continue;
      ks.notes_.push_back(std::to_string(levels) + "-level paging (" + why +
                          (levels == guessed ? ")" : "; but only " + std::to_string(levels) + " levels walk to the banner)"));
      ks.notes_.push_back("root init_top_pgt at " + hex_address(layer->root()) + " maps linux_banner to the banner");
      ks.kernel_ = std::move(layer);
      return ks;
    }
    tried += " " + hex_address(banner_pa) + " (init_top_pgt does not map linux_banner there)";
  }
  return fail(Errc::kNotFound, "the kernel banner is in the image but no candidate kernel load address checks out:" + tried);
}

Result<uint64_t> KernelSpace::to_physical(uint64_t vaddr) const {
  MLFX_ASSIGN(Translation t, kernel_->translate(vaddr));
  if (t.state != PageState::kPresent)
    return fail(Error(Errc::kInvalidAddress, std::string("kernel address ") + page_state_name(t.state))
                    .at({"kernel", vaddr, std::nullopt}));
  return t.physical_of(vaddr);
}

}  // namespace mlfx::kernel
