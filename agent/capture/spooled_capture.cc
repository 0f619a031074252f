#include "capture/spooled_capture.h"

namespace mlfx::agent {

Result<SpooledCapture> capture_into_spool(Spool& spool, const std::string& name,
                                          const std::vector<CaptureSource*>& sources,
                                          const bundle::SealingKeys& keys, bundle::SealParams params,
                                          bool show_progress, const CaptureTrigger* trigger) {
  // The bundle grows to about the sources' size: refuse before freezing anything when the
  // spool has no room for that.
  uint64_t expected = 0;
  for (const CaptureSource* s : sources) expected += s->expected_bytes();
  MLFX_TRY(spool.check_room(expected));
  MLFX_ASSIGN(IncomingFile incoming, spool.create_incoming(name));
  Rollback incomplete([&] { spool.discard_incoming(incoming); });
  SpooledCapture done;
  auto outcome = capture_to_bundle(sources, std::move(incoming.file), *keys.device.signing, keys.recipients,
                                   std::move(params), show_progress, trigger);
  if (!outcome) return fail(std::move(outcome).error());
  done.outcome = std::move(*outcome);
  MLFX_ASSIGN(done.entry, spool.add_incoming(incoming));
  incomplete.commit();
  return done;
}

}  // namespace mlfx::agent
