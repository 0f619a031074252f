// `mlfx report`: one self-contained HTML page (styles inline, pictures embedded as data URIs)
// plus report.json, from what the lab produced for a case: the bundle (manifest, custody
// chain, verification), the recovery, rehosts and scans. The JSON is assembled first and the
// HTML is rendered from it, so both always say the same.
#pragma once

#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::report {

struct ReportOptions {
  std::string out_dir;                  // report.html, report.json
  std::string case_id, examiner, title;
  std::string bundle;                   // the evidence bundle (optional)
  std::string trusted_devices_dir;      // for the bundle's verification
  std::string recovery;                 // a `mlfx recover` directory (optional)
  std::vector<std::string> rehosts;     // `mlfx rehost` directories
  std::vector<std::string> scans;       // `mlfx scan ...` directories (any kind)
};

Result<json::Json> build_report(const ReportOptions& o);

// The page for a report.json (pictures are read from the directories it names).
Result<std::string> render_html(const json::Json& report);

}  // namespace mlfx::report
