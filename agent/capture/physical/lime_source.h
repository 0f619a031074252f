// `mlfx-agent capture --source lime`: stock LiME (Debian's lime-forensics-dkms) reads physical
// memory; its output goes straight into the sealer, never to a file.
//
// How LiME's output reaches us: a FIFO. The agent makes a private directory (mode 0700, under
// /run, else /dev/shm, else /tmp), two FIFOs in it (mode 0600): `image` and `image.sha256`, opens
// both for reading, and loads LiME with
//     path=<dir>/image format=lime digest=sha256 dio=0 timeout=0
// on a thread (LiME's init is the whole dump: finit_module returns when it is done). LiME opens
// the FIFO as its output file and writes at our pace; its digest goes to PATH.sha256, the second
// FIFO. Why not LiME's TCP mode (path=tcp:PORT): LiME has no authentication, so any local
// process that connects first receives all of RAM (and without localhostonly=1 any host on the
// network); a port can be taken; the digest needs a second connection that LiME waits for
// forever; and the loopback of another network namespace is not LiME's. Only root can open the
// FIFO, pipe data never touches a disk, and on an abort closing our end makes every LiME write
// fail at once (EPIPE) so that its init returns and the module can be removed.
// timeout=0: LiME's default (1000 ms) zero-fills the rest of a range whenever one page takes a
// second to write, which a reader that waits for the sealer can cause.
//
// The stream is checked as it arrives (lime_format.h); the agent hashes what it receives and
// compares LiME's digest with it; LiME is unloaded on every path (it stays loaded after a dump,
// its exit function does nothing). The context records what LiME does not: the iomem tree, the
// RAM it skips (LiME 1.9.1 walks only the top level: nested "System RAM (kmem)" or
// "(virtio_mem)" ranges are missing), and the partial pages it writes as zeros.
#pragma once

#include <memory>

#include "capture/physical/physical_source.h"

namespace mlfx::agent::physical {

inline constexpr char kLimeModuleFile[] = "lime.ko";

class LimeSource final : public PhysicalSource {
 public:
  static Result<std::unique_ptr<LimeSource>> create(PhysicalOptions options);

  std::string name() const override { return "lime"; }
  // LiME's own digest of its output, compared with the SHA-256 of the sealed stream.
  bool digest_matches() const { return tool_sha256_ == image_sha256_; }

 protected:
  Status read_image(bundle::BundleWriter& bundle, Progress* progress) override;
  Status release_module() override;
  std::string memory_stream_source() const override { return "lime:" + module_.path; }
  json::Json module_parameters() const override { return parameters_; }
  json::Json source_context() const override;
  std::string method() const override;

 private:
  explicit LimeSource(PhysicalOptions options) : PhysicalSource(std::move(options)) {}
  void account_for_what_lime_left_out(const std::vector<PhysRange>& written);

  std::string parameters_;
  std::string tool_sha256_;
  bool loaded_ = false;  // by us: unload it
  json::Json footprint_ = json::Json::object();
};

}  // namespace mlfx::agent::physical
