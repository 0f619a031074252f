#include "report/report.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>

#include "evidence/bundle_check.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/version.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::report {

namespace {

constexpr size_t kMaxJson = size_t{256} << 20;
constexpr size_t kMaxImage = size_t{16} << 20;

Result<json::Json> read_json(const std::string& path) {
  MLFX_ASSIGN(std::string text, read_small_file(path, kMaxJson));
  json::Json j = json::Json::parse(text, nullptr, false);
  if (j.is_discarded()) return fail(Errc::kBadFormat, path + " is not valid JSON");
  return j;
}

bool exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

Result<std::string> sha256_of_file(const std::string& path) {
  MLFX_ASSIGN(File f, File::open_read(path));
  MLFX_ASSIGN(auto h, crypto::Hasher::create(crypto::HashAlg::kSha256));
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    MLFX_ASSIGN(size_t n, f.read_full(buf.data(), buf.size()));
    if (n == 0) break;
    h.update(ByteView(buf.data(), n));
  }
  MLFX_ASSIGN(Bytes d, h.finish());
  return to_hex(d);
}

// The input files the report rests on, with their hashes: the report's own provenance.
struct Sources {
  json::Json files = json::Json::array();
  Status add(const std::string& path) {
    MLFX_ASSIGN(std::string digest, sha256_of_file(path));
    files.push_back({{"path", path}, {"sha256", digest}});
    return {};
  }
};

// "intake 'lab-1' sha256:..." for a custody event's actor.
std::string actor_of(const json::Json& ev) {
  const json::Json actor = ev.value("actor", json::Json::object());
  if (!actor.is_object()) return "";
  const auto field = [&](const char* k) { return actor.contains(k) && actor[k].is_string() ? actor[k].get<std::string>() : ""; };
  return field("role") + " '" + field("id") + "' " + field("key_fingerprint");
}

Result<json::Json> evidence_section(const ReportOptions& o, json::Json& timeline, Sources& sources) {
  MLFX_ASSIGN(auto reader, bundle::BundleReader::open(o.bundle));
  MLFX_ASSIGN(std::string digest, reader.digest());
  MLFX_TRY(sources.add(o.bundle));
  const bundle::Manifest& m = reader.manifest();
  evidence::VerifyOptions vo;
  vo.trusted_devices_dir = o.trusted_devices_dir;
  vo.show_progress = false;
  evidence::VerifyReport v = evidence::verify_bundle(o.bundle, vo);
  // The whole chain as stored: an intake's 'received' event and receipt included.
  evidence::StoredCustody stored = evidence::stored_custody(reader);
  const json::Json& custody = stored.events;
  for (const auto& ev : custody)
    timeline.push_back({{"utc", ev.value("utc", "")}, {"event", "custody: " + ev.value("type", "?")},
                        {"by", actor_of(ev)}});
  timeline.push_back({{"utc", m.created_utc}, {"event", "capture started on the device"}, {"by", m.device.id}});
  timeline.push_back({{"utc", m.sealed_utc}, {"event", "bundle sealed and signed on the device"}, {"by", m.device.id}});
  return json::Json{{"file", o.bundle}, {"file_size", reader.file_size()}, {"sha256", sources.files.back()["sha256"]},
                    {"bundle_digest", digest}, {"manifest", m.to_json()}, {"custody", custody},
                    {"receipt", stored.receipt}, {"verification", v.to_json()}, {"intact", v.intact()},
                    {"verdict", evidence::verdict_name(v.verdict())}};
}

json::Json findings_of(const json::Json& scans) {
  json::Json f = json::Json::array();
  for (const auto& s : scans) {
    const std::string kind = s["result"].value("scan", "");
    const auto& r = s["result"];
    if (kind == "neural-cleanse") {
      for (const auto& c : r["classes"])
        if (c.value("flagged", false))
          f.push_back({{"severity", "high"}, {"scan", s["dir"]},
                       {"text", "Neural Cleanse flags class " + c["class"].dump() + " of " + r.value("model", "?") +
                                    ": its reversed trigger (mask L1 " + std::to_string(c["mask_l1"].get<double>()) +
                                    ") is an outlier, anomaly index " + std::to_string(c["anomaly_index"].get<double>()) +
                                    " > " + r["parameters"]["anomaly_threshold"].dump() + "; a backdoor is suspected"}});
      if (r["flagged"].empty())
        f.push_back({{"severity", "info"}, {"scan", s["dir"]},
                     {"text", "Neural Cleanse flags no class of " + r.value("model", "?")}});
    } else if (kind == "weight-diff") {
      f.push_back({{"severity", r.value("identical", false) ? "info" : "medium"}, {"scan", s["dir"]},
                   {"text", "Weight diff against " + r.value("baseline", "?") + ": " + r["changed_elements"].dump() +
                                " of " + r["compared_elements"].dump() + " elements changed, " +
                                std::to_string(r["added_layers"].size()) + " layer(s) added, " +
                                std::to_string(r["missing_layers"].size()) + " missing"}});
    } else if (kind == "differential") {
      for (const auto& set : r["input_sets"])
        f.push_back({{"severity", set.value("disagreements", 0) > 0 ? "medium" : "info"}, {"scan", s["dir"]},
                     {"text", "Differential testing on " + set.value("inputs", "?") + ": " + set["disagreements"].dump() +
                                  " of " + set["samples"].dump() + " decisions differ; flips " + set["flips"].dump()}});
    }
  }
  return f;
}

// What the report can and cannot vouch for, one statement per claim; a check that did not run
// is said not to have run. "level" colours the banner: alert (a failure or a backdoor
// suspected), clear (every claim checked and passed), caution (anything not checked).
json::Json verdict_of(const json::Json& report) {
  json::Json statements = json::Json::array();
  const json::Json* ev = report.contains("evidence") ? &report["evidence"] : nullptr;
  const std::string device = report.value("device", json::Json::object()).value("id", "");
  std::string evidence = "not_run", text = "Evidence not verified: no bundle in this report";
  if (ev) {
    evidence = ev->value("verdict", "failed");
    if (evidence == "attributed") {
      text = "Evidence intact and attributed: the trust store binds its signing key to device '" + device + "'";
    } else if (evidence == "identity_unverified") {
      text = "Evidence intact, identity unverified: no trust store binds its signing key to device '" + device +
             "' (give --trusted-devices)";
    } else {
      text = "Evidence verification FAILED";
      for (const auto& c : (*ev)["verification"].value("checks", json::Json::array()))
        if (c.value("result", "") == "failed") text += ": " + c.value("check", "") + ": " + c.value("detail", "");
    }
  }
  statements.push_back({{"check", "evidence"}, {"result", evidence}, {"text", text}});
  // The device's own account of the capture: a partial one is never shown as complete.
  std::string capture = "not_stated";
  if (ev) {
    const json::Json& v = (*ev)["verification"];
    if (v.value("capture_complete", json::Json()) == true) {
      capture = "complete";
    } else if (v.value("capture_complete", json::Json()) == false) {
      capture = "incomplete";
      statements.push_back({{"check", "capture"}, {"result", capture}, {"text", v.value("capture_incomplete", "INCOMPLETE capture")}});
    }
  }
  size_t scans = 0;
  std::vector<std::string> flagged;
  for (const auto& s : report["scans"]) {
    const auto& r = s["result"];
    if (r.value("scan", "") != "neural-cleanse") continue;
    ++scans;
    if (!r.value("flagged", json::Json::array()).empty())
      flagged.push_back(r.value("model", "?") + " (class " + r["flagged"].dump() + ")");
  }
  std::string backdoor = "not_run";
  text = "Backdoor scan not run: no Neural Cleanse scan in this report, so nothing is claimed about backdoors";
  if (!flagged.empty()) {
    backdoor = "flagged";
    text = "Backdoor suspected: Neural Cleanse flags ";
    for (size_t i = 0; i < flagged.size(); ++i) text += (i ? ", " : "") + flagged[i];
  } else if (scans) {
    backdoor = "none_flagged";
    text = "No backdoor flagged by the " + std::to_string(scans) + " Neural Cleanse scan(s) in this report";
  }
  statements.push_back({{"check", "backdoor scan"}, {"result", backdoor}, {"text", text}});
  std::string level = "caution";
  if (evidence == "failed" || backdoor == "flagged") level = "alert";
  else if (evidence == "attributed" && backdoor == "none_flagged" && capture != "incomplete") level = "clear";
  return {{"level", level}, {"evidence", evidence}, {"capture", capture}, {"backdoor_scan", backdoor},
          {"statements", statements}};
}

}  // namespace

Result<json::Json> build_report(const ReportOptions& o) {
  if (o.bundle.empty() && o.recovery.empty() && o.rehosts.empty() && o.scans.empty())
    return fail(Errc::kInvalidArgument, "nothing to report: give --bundle, --recovery, --rehost or --scan");
  MLFX_TRY(make_output_dir(o.out_dir, {"report.html", "report.json"}));
  Sources sources;
  json::Json timeline = json::Json::array();
  json::Json report = {{"title", o.title.empty() ? "mlfx forensic report" : o.title},
                       {"generated_utc", utc_timestamp()},
                       {"tool", {{"name", "mlfx"}, {"version", kToolVersion}}},
                       {"case", {{"id", o.case_id}, {"examiner", o.examiner}}}};
  if (!o.bundle.empty()) {
    MLFX_ASSIGN(json::Json ev, evidence_section(o, timeline, sources));
    const auto& manifest = ev["manifest"];
    if (o.case_id.empty()) report["case"]["id"] = manifest.value("case_id", "");
    report["device"] = manifest.value("device", json::Json::object());
    report["evidence"] = std::move(ev);
  }
  if (!o.recovery.empty()) {
    MLFX_ASSIGN(json::Json rec, read_json(o.recovery + "/report.json"));
    MLFX_TRY(sources.add(o.recovery + "/report.json"));
    json::Json models = json::Json::array();
    for (const auto& m : rec.value("models", json::Json::array())) {
      json::Json entry = m;
      const std::string sd = o.recovery + "/" + m.value("directory", "") + "/state_dict.safetensors";
      if (exists(sd)) {
        MLFX_ASSIGN(std::string h, sha256_of_file(sd));
        entry["state_dict_sha256"] = h;
      }
      models.push_back(std::move(entry));
    }
    report["recovery"] = {{"dir", o.recovery}, {"created_utc", rec.value("created_utc", "")},
                          {"tool", rec.value("tool", json::Json())}, {"process", rec.value("process", json::Json())},
                          {"python", rec.value("python", json::Json())}, {"torch", rec.value("torch", json::Json())},
                          {"models", models}, {"timings", rec.value("timings", json::Json())},
                          {"warnings", rec.value("diagnostics", json::Json::object()).value("warnings", json::Json::array())}};
    timeline.push_back({{"utc", rec.value("created_utc", "")}, {"event", "models recovered (mlfx recover)"}, {"by", "lab"}});
  }
  json::Json rehosts = json::Json::array();
  for (const auto& d : o.rehosts) {
    MLFX_ASSIGN(json::Json r, read_json(d + "/rehost.json"));
    MLFX_TRY(sources.add(d + "/rehost.json"));
    if (r["torchscript"].is_string() && exists(d + "/" + r["torchscript"].get<std::string>())) {
      MLFX_ASSIGN(std::string h, sha256_of_file(d + "/" + r["torchscript"].get<std::string>()));
      r["torchscript_sha256"] = h;
    }
    rehosts.push_back({{"dir", d}, {"result", r}});
  }
  report["rehosts"] = rehosts;
  json::Json scans = json::Json::array();
  for (const auto& d : o.scans) {
    std::string file;
    for (const char* name : {"neural_cleanse.json", "weight_diff.json", "differential.json"})
      if (exists(d + "/" + name)) file = d + "/" + name;
    if (file.empty())
      return fail(Errc::kNotFound, d + " holds no scan result (neural_cleanse.json, weight_diff.json or differential.json)");
    MLFX_ASSIGN(json::Json r, read_json(file));
    MLFX_TRY(sources.add(file));
    scans.push_back({{"dir", d}, {"result", r}});
  }
  report["scans"] = scans;
  report["findings"] = findings_of(scans);
  report["verdict"] = verdict_of(report);
  std::stable_sort(timeline.begin(), timeline.end(),
                   [](const json::Json& a, const json::Json& b) { return a.value("utc", "") < b.value("utc", ""); });
  report["timeline"] = timeline;
  report["sources"] = sources.files;

  MLFX_ASSIGN(std::string html, render_html(report));
  MLFX_TRY(write_new_file(o.out_dir + "/report.json", report.dump(1) + "\n", 0640));
  MLFX_TRY(write_new_file(o.out_dir + "/report.html", html, 0640));
  return report;
}

}  // namespace mlfx::report
