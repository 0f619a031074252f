// mlfx bundle seal / verify / open / info: evidence bundles (protocol/doc/bundle-format.md).
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include "cli/command.h"
#include "evidence/bundle_check.h"
#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/base/printable.h"
#include "mlfx/base/progress.h"
#include "mlfx/base/write_behind.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/bundle/sealing_keys.h"
#include "mlfx/bundle/writer.h"

namespace mlfx::cli {
namespace {

struct SealArgs {
  std::vector<std::string> inputs, names, recipients;
  std::string out, device_key, case_id, note, device_id;
  uint32_t chunk_size = bundle::kDefaultChunkSize;
  bool legacy_hashes = false, quiet = false;
};

// The lab's sealing policy: chunk buffers on transparent huge pages (a GiB sealed took 5,700
// page faults of about 12 us each here without), and write-behind (mlfx/base/write_behind.h),
// so the fsync that ends sealing has little left to wait for (it took 0.7 s of the 1.8 s a GiB
// took here without). The agent's policy does both and more (agent/io/capture_io_policy.h).
class LabSealingPolicy final : public bundle::SealingPolicy {
 public:
  void chunk_buffer_mapped(void* data, size_t size) override { (void)madvise(data, size, MADV_HUGEPAGE); }
  void wrote(int fd, uint64_t offset, uint64_t size) override { write_behind.wrote(fd, offset, size); }
  WriteBehind write_behind;
};

std::string default_stream_name(const std::string& input) {
  if (input == "-") return "stdin";
  auto slash = input.find_last_of('/');
  return slash == std::string::npos ? input : input.substr(slash + 1);
}

Result<bundle::Manifest> seal(const SealArgs& a) {
  MLFX_ASSIGN(bundle::SealingKeys keys, bundle::load_sealing_keys(a.device_key, a.recipients));
  if (!a.names.empty() && a.names.size() != a.inputs.size())
    return fail(Errc::kInvalidArgument, "--name given " + std::to_string(a.names.size()) +
                                            " times for " + std::to_string(a.inputs.size()) + " inputs");
  if (std::count(a.inputs.begin(), a.inputs.end(), "-") > 1)
    return fail(Errc::kInvalidArgument, "standard input ('-') can be sealed only once");
  // Open every input first so that a typo fails before anything is written.
  std::vector<File> files;
  json::Json inputs = json::Json::array();
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    if (a.inputs[i] == "-") {
      files.push_back(File::standard_input());
    } else {
      MLFX_ASSIGN(File f, File::open_read(a.inputs[i]));
      files.push_back(std::move(f));
    }
    inputs.push_back({{"path", a.inputs[i]}, {"stream", a.names.empty() ? default_stream_name(a.inputs[i]) : a.names[i]}});
  }

  bundle::SealParams p;
  p.chunk_size = a.chunk_size;
  p.case_id = a.case_id;
  p.note = a.note;
  p.device_id = a.device_id;
  p.command = "bundle seal";
  LabSealingPolicy policy;  // outlives the writer
  p.policy = &policy;
  p.legacy_hashes = a.legacy_hashes;
  p.tool_parameters = {{"inputs", inputs}, {"chunk_size", a.chunk_size}, {"legacy_hashes", a.legacy_hashes},
                       {"recipients", a.recipients}, {"case_id", a.case_id}};
  MLFX_ASSIGN(File out, File::create_new(a.out, 0640));
  Rollback incomplete = remove_unless_committed(a.out);  // a failure removes the incomplete bundle
  MLFX_ASSIGN(bundle::BundleWriter w, bundle::BundleWriter::create(std::move(out), *keys.device.signing,
                                                                 keys.recipients, p));
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string name = inputs[i]["stream"];
    MLFX_TRY(w.begin_stream(name, a.inputs[i] == "-" ? "stdin" : a.inputs[i]));
    uint64_t total = 0;
    struct stat st;
    if (fstat(files[i].fd(), &st) == 0 && S_ISREG(st.st_mode)) total = static_cast<uint64_t>(st.st_size);
    std::optional<Progress> bar;
    if (!a.quiet) bar.emplace("sealing " + name, total);
    if (auto r = w.write_from(files[i], bar ? &*bar : nullptr); !r)
      return fail(std::move(r).error().context("stream " + name));
    if (bar) bar->finish();
    MLFX_TRY(w.end_stream());
  }
  MLFX_ASSIGN(bundle::Manifest m, w.finish());
  MLFX_TRY(policy.write_behind.stop());
  incomplete.commit();
  return m;
}

int run_seal(const SealArgs& a) {
  auto m = seal(a);
  if (!m) return report_error("bundle seal", m.error());
  std::printf("sealed %s: bundle %s, %zu stream(s), %zu recipient(s)\n", a.out.c_str(),
              m->bundle_id_hex().c_str(), m->streams.size(), m->recipients.size());
  for (const auto& s : m->streams)
    std::printf("  %-20s %14llu bytes  sha256 %s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.size), s.sha256.c_str());
  return 0;
}

// ---- bundle verify / open / info ----

struct VerifyArgs {
  std::string file, trusted;
  bool json = false, quiet = false;
};

int run_verify(const VerifyArgs& a) {
  evidence::VerifyReport r =
      evidence::verify_bundle(a.file, {a.trusted, !a.quiet && !a.json});
  const evidence::Verdict v = r.verdict();
  if (a.json) {
    std::cout << printable_json(r.to_json(), 2) << "\n";
  } else {
    for (const auto& l : r.lines)
      std::printf("%-14s %-7s  %s\n", l.check.c_str(), l.ok() ? "ok" : evidence::outcome_name(l.outcome), printable(l.detail).c_str());
    if (r.incomplete_capture) std::printf("%-14s %-7s  %s\n", "capture", "PARTIAL", printable(*r.incomplete_capture).c_str());
    std::printf("%s: %s%s\n", printable(a.file).c_str(), evidence::verdict_words(v),
                r.incomplete_capture ? " (of an INCOMPLETE capture)" : "");
  }
  return v == evidence::Verdict::kAttributed ? 0 : v == evidence::Verdict::kIdentityUnverified ? kExitIdentityUnverified : kExitFailure;
}

// open and recover go on with an unattributed bundle, and say so.
void warn_unverified(const char* command, const evidence::VerifyReport& r) {
  if (r.incomplete_capture) std::fprintf(stderr, "mlfx %s: warning: %s\n", command, printable(*r.incomplete_capture).c_str());
  if (r.verdict() != evidence::Verdict::kIdentityUnverified) return;
  for (const auto& l : r.lines)
    if (l.check == "device") std::fprintf(stderr, "mlfx %s: warning: %s\n", command, printable(l.detail).c_str());
}

struct OpenArgs {
  std::string file, key, out, trusted;
  bool quiet = false;
};

int run_open(const OpenArgs& a) {
  auto lab = crypto::load_secret_key_file(a.key);
  if (!lab) return report_error("bundle open", lab.error());
  auto r = evidence::open_bundle(a.file, *lab, a.out, {a.trusted, !a.quiet});
  if (!r) return report_error("bundle open", std::move(r).error().context("opening " + a.file));
  warn_unverified("bundle open", r->report);
  std::printf("opened %s (%s) into %s:\n", printable(a.file).c_str(), evidence::verdict_words(r->report.verdict()), printable(a.out).c_str());
  for (const auto& f : r->files) std::printf("  %s\n", printable(f).c_str());
  std::printf("check with: (cd %s && sha256sum -c SHA256SUMS)\n", a.out.c_str());
  return 0;
}

struct InfoArgs {
  std::string file;
  bool json = false;
};

int run_info(const InfoArgs& a) {
  auto r = bundle::BundleReader::open(a.file);
  if (!r) return report_error("bundle info", r.error());
  const bundle::Manifest& m = r->manifest();
  auto digest = r->digest();
  if (!digest) return report_error("bundle info", digest.error());
  if (a.json) {
    json::Json j = {{"file", a.file}, {"file_size", r->file_size()}, {"bundle_digest", *digest},
                    {"manifest", m.to_json()}, {"custody", r->custody().events()}};
    std::cout << printable_json(j, 2) << "\n";
    return 0;
  }
  std::printf("bundle      %s (%llu bytes, format %u.%u)\n", m.bundle_id_hex().c_str(),
              static_cast<unsigned long long>(r->file_size()), m.format_major, m.format_minor);
  std::printf("digest      %s\n", digest->c_str());
  std::printf("case        %s\nnote        %s\n", printable(m.case_id).c_str(), printable(m.note).c_str());
  std::printf("device      %s (host %s) key %s (claimed by the manifest)\n", printable(m.device.id).c_str(), printable(m.device.hostname).c_str(),
              printable(m.device.key_fingerprint).c_str());
  std::printf("tool        %s %s, %s\n", printable(m.tool.name).c_str(), printable(m.tool.version).c_str(), printable(m.tool.command).c_str());
  std::printf("created     %s\nsealed      %s\n", printable(m.created_utc).c_str(), printable(m.sealed_utc).c_str());
  if (auto partial = evidence::incomplete_capture(m)) std::printf("capture     %s\n", printable(*partial).c_str());
  for (const auto& rc : m.recipients) std::printf("recipient   %s\n", printable(rc.recipient_fingerprint).c_str());
  for (const auto& s : m.streams)
    std::printf("stream      %s: %llu bytes, %llu chunks, sha256 %s\n", printable(s.name).c_str(),
                static_cast<unsigned long long>(s.size), static_cast<unsigned long long>(s.chunks),
                s.sha256.c_str());
  for (const auto& ev : r->custody().events()) {
    const json::Json actor = ev.value("actor", json::Json::object());
    std::printf("custody     %s %s by %s\n", printable(ev.value("utc", "?")).c_str(), printable(ev.value("type", "?")).c_str(),
                printable(actor.is_object() ? actor.value("key_fingerprint", "?") : "?").c_str());
  }
  std::printf("(structure only; run 'mlfx bundle verify' to check signatures and every chunk)\n");
  return 0;
}

}  // namespace

void add_bundle_commands(CLI::App& app, Registry& registry) {
  auto* bundle = app.add_subcommand("bundle", "seal, verify, open and inspect evidence bundles")->require_subcommand(1);
  auto sa_ptr = std::make_shared<SealArgs>();
  SealArgs& sa = *sa_ptr;
  auto* seal = bundle->add_subcommand("seal", "seal files (or - for stdin) into a new bundle, one stream each");
  seal->add_option("files", sa.inputs, "input files, '-' for standard input")->required();
  seal->add_option("--out", sa.out, "bundle to create (must not exist)")->required();
  seal->add_option("--device-key", sa.device_key, "device private key that signs")->required();
  seal->add_option("--recipient", sa.recipients, "lab public key to encrypt to (repeatable)")->required();
  seal->add_option("--case", sa.case_id, "case identifier");
  seal->add_option("--note", sa.note, "operator note");
  seal->add_option("--device-id", sa.device_id, "device name recorded in the manifest (default: host name)");
  seal->add_option("--name", sa.names, "stream name for each input, in order (default: file name)");
  seal->add_option("--chunk-size", sa.chunk_size, "plaintext bytes per chunk")
      ->check(CLI::Range(bundle::kMinChunkSize, bundle::kMaxChunkSize));
  seal->add_flag("--legacy-hashes", sa.legacy_hashes, "also record MD5 and SHA-1 of each stream");
  seal->add_flag("-q,--quiet", sa.quiet, "no progress bar");

  auto va_ptr = std::make_shared<VerifyArgs>();
  VerifyArgs& va = *va_ptr;
  auto* verify = bundle->add_subcommand("verify", "check structure, signatures, every chunk and the custody chain (no lab key needed)");
  verify->add_option("file", va.file, "bundle")->required();
  verify->add_option("--trusted-devices", va.trusted, kTrustedDevicesHelp);
  verify->add_flag("--json", va.json, "print the report as JSON");
  verify->add_flag("-q,--quiet", va.quiet, "no progress bar");

  auto oa_ptr = std::make_shared<OpenArgs>();
  OpenArgs& oa = *oa_ptr;
  auto* open = bundle->add_subcommand("open", "verify, decrypt and write the streams as plain files with SHA256SUMS");
  open->add_option("file", oa.file, "bundle")->required();
  open->add_option("--key", oa.key, "lab private key")->required();
  open->add_option("--out", oa.out, "output directory (new or empty)")->required();
  open->add_option("--trusted-devices", oa.trusted, kTrustedDevicesHelp);
  open->add_flag("-q,--quiet", oa.quiet, "no progress bar");

  auto ia_ptr = std::make_shared<InfoArgs>();
  InfoArgs& ia = *ia_ptr;
  auto* info = bundle->add_subcommand("info", "show the manifest and custody log (structure checks only)");
  info->add_option("file", ia.file, "bundle")->required();
  info->add_flag("--json", ia.json, "print as JSON");

  registry.add(seal, [sa_ptr] { return run_seal(*sa_ptr); });
  registry.add(verify, [va_ptr] { return run_verify(*va_ptr); });
  registry.add(open, [oa_ptr] { return run_open(*oa_ptr); });
  registry.add(info, [ia_ptr] { return run_info(*ia_ptr); });
}

}  // namespace mlfx::cli
