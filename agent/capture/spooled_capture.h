// A capture sealed straight into the spool (upload/spool.h): room checked before anything is
// frozen, written under incoming/ with its lock held, queued for shipping only when sealed; an
// incomplete bundle is removed. Used by `mlfx-agent capture --spool` and by the daemon.
#pragma once

#include <string>
#include <vector>

#include "capture/capture.h"
#include "mlfx/bundle/sealing_keys.h"
#include "upload/spool.h"

namespace mlfx::agent {

struct SpooledCapture {
  CaptureOutcome outcome;
  SpoolEntry entry;  // where it is queued
};

// `name`: the file name in incoming/ (e.g. "capture-4242-17.mlfx"); the caller makes it unique.
Result<SpooledCapture> capture_into_spool(Spool& spool, const std::string& name,
                                          const std::vector<CaptureSource*>& sources,
                                          const bundle::SealingKeys& keys, bundle::SealParams params,
                                          bool show_progress, const CaptureTrigger* trigger = nullptr);

}  // namespace mlfx::agent
