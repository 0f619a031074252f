// The HTML rendering of report.json: plain HTML and inline CSS, no scripts, so the page reads
// the same in any browser, offline, years from now.
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/file.h"
#include "mlfx/base/printable.h"
#include "report/report.h"

namespace mlfx::report {

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

// Names in a report come from evidence: escaped for HTML, and made printable (no control
// characters, no bidirectional overrides that reorder what the reader sees, valid UTF-8).
std::string text(const json::Json& v) {
  return esc(v.is_string() ? printable(v.get<std::string>()) : v.is_null() ? "" : printable_json(v));
}

std::string num(const json::Json& v, int digits = 3) {
  if (!v.is_number()) return text(v);
  if (v.is_number_integer()) return v.dump();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v.get<double>());
  return buf;
}

// A PNG the scan wrote, embedded; a note instead when it cannot be read.
std::string image(const std::string& path, const std::string& alt, const std::string& cls) {
  auto bytes = read_small_file(path, size_t{16} << 20);
  if (!bytes || bytes->size() < 8 || bytes->compare(1, 3, "PNG") != 0)
    return "<span class=\"missing\">(" + esc(path) + " unreadable)</span>";
  return "<img class=\"" + cls + "\" alt=\"" + esc(alt) + "\" src=\"data:image/png;base64," +
         to_base64(as_bytes(*bytes)) + "\">";
}

std::string row(std::initializer_list<std::string> cells, const char* tag = "td") {
  std::string r = "<tr>";
  for (const auto& c : cells) r += std::string("<") + tag + ">" + c + "</" + tag + ">";
  return r + "</tr>\n";
}

std::string mono(const json::Json& v) { return "<span class=\"mono\">" + text(v) + "</span>"; }

// What path (b) of a rehost ran, from its rehost.json: the interpreter and how, the embedded
// script, each file of the analyst's source and each library module, with their SHA-256.
std::string executed_code_html(const json::Json& dir, const json::Json& x) {
  if (!x.is_object() || !x.value("python_ran", false)) return "";
  const json::Json none, i = x.value("interpreter", json::Json::object()), s = x.value("script", json::Json::object());
  std::string how;
  for (const auto& a : i.value("arguments", json::Json::array())) how += " " + text(a);
  std::string h = "<h3>Code executed by the lab's Python for " + text(dir) + "</h3><table>" +
                  row({"code", "file", "SHA-256"}, "th") +
                  row({"interpreter, run as <code>python" + how + "</code> in an empty temporary directory",
                       mono(i.value("path", none)), mono(i.value("sha256", none))}) +
                  row({"mlfx_rehost.py (embedded in mlfx)", "", mono(s.value("sha256", none))});
  if (!x.value("code_files", none).is_array()) h += row({text(x.value("note", none)), "", ""});
  for (const auto& f : x.value("code_files", json::Json::array()))
    if (f.is_object())
      h += row({"analyst's source, module " + text(f.value("module", none)), mono(f.value("path", none)), mono(f.value("sha256", none))});
  for (const auto& m : x.value("library_modules", json::Json::array()))
    if (m.is_object())
      h += row({"library module " + text(m.value("name", none)), mono(m.value("file", none)), mono(m.value("sha256", none))});
  return h + "</table><p>Allowed library modules: " + text(x.value("allowed_modules", none)) +
         "; added by the analyst: " + text(x.value("allowed_modules_added", none)) + "</p>\n";
}

constexpr const char* kStyle = R"css(
body{font:14px/1.45 "DejaVu Sans",Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2329}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header .meta{opacity:.85;margin-top:4px}main{padding:8px 28px 40px}
section{background:#fff;border:1px solid #d8dce2;border-radius:6px;margin:16px 0;padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px;color:#1f3a5f}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0}td,th{border-bottom:1px solid #e3e6ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}code,.mono{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
#verdict{padding:14px 18px;border-radius:6px;font-size:16px;font-weight:bold;margin:16px 0}
#verdict.alert{background:#b3261e;color:#fff}#verdict.clear{background:#1e7b34;color:#fff}
#verdict.caution{background:#8a5a00;color:#fff}
.flagged td{background:#fbe3e1;font-weight:bold}.ok{color:#1e7b34;font-weight:bold}.bad{color:#b3261e;font-weight:bold}.warn{color:#8a5a00;font-weight:bold}
.trigger{width:96px;height:96px;image-rendering:pixelated;border:1px solid #888;margin:2px}
.heat{max-width:256px;image-rendering:pixelated;border:1px solid #888}
.grid{display:flex;flex-wrap:wrap;gap:12px}.cell{text-align:center;font-size:12px}.missing{color:#b3261e}
)css";

// A check's outcome: passed, not run (never shown as a pass) or failed.
std::string result_html(const std::string& result) {
  if (result == "passed") return "<span class=\"ok\">passed</span>";
  if (result == "not run") return "<span class=\"warn\">NOT RUN</span>";
  return "<span class=\"bad\">FAILED</span>";
}

std::string verdict_html(const std::string& verdict) {
  if (verdict == "attributed") return "<span class=\"ok\">intact and attributed</span>";
  if (verdict == "identity_unverified") return "<span class=\"warn\">intact, identity unverified</span>";
  return "<span class=\"bad\">FAILED</span>";
}

std::string evidence_html(const json::Json& ev) {
  std::string s = "<section id=\"evidence\"><h2>Evidence</h2><table>";
  const auto& m = ev["manifest"];
  s += row({"Bundle", "<span class=\"mono\">" + text(ev["file"]) + "</span> (" + num(ev["file_size"]) + " bytes)"});
  s += row({"SHA-256 (file)", "<span class=\"mono\">" + text(ev["sha256"]) + "</span>"});
  s += row({"Bundle digest", "<span class=\"mono\">" + text(ev["bundle_digest"]) + "</span>"});
  s += row({"Verification", verdict_html(ev.value("verdict", "failed"))});
  s += row({"Captured", text(m.value("created_utc", json::Json())) + " (sealed " + text(m.value("sealed_utc", json::Json())) + ")"});
  s += row({"Capture tool", text(m.value("tool", json::Json::object()).value("name", json::Json())) + " " +
                                text(m.value("tool", json::Json::object()).value("version", json::Json()))});
  s += "</table><h3>Checks</h3><table>" + row({"check", "result", "detail"}, "th");
  for (const auto& l : ev["verification"].value("checks", ev["verification"].value("lines", json::Json::array())))
    s += row({text(l.value("check", json::Json())), result_html(l.value("result", l.value("ok", false) ? "passed" : "failed")),
              text(l.value("detail", json::Json()))});
  s += "</table><h3>Streams</h3><table>" + row({"stream", "bytes", "SHA-256"}, "th");
  for (const auto& st : m.value("streams", json::Json::array()))
    s += row({text(st.value("name", json::Json())), num(st.value("size", json::Json())),
              "<span class=\"mono\">" + text(st.value("sha256", json::Json())) + "</span>"});
  // The chain as stored: the device's events, then the intake's 'received', then the lab's.
  s += "</table><h3>Custody chain</h3><table>" + row({"#", "time (UTC)", "event", "actor", "actor key"}, "th");
  int i = 0;
  for (const auto& e : ev["custody"]) {
    const json::Json none, actor = e.is_object() ? e.value("actor", json::Json::object()) : json::Json::object();
    const bool a = actor.is_object();
    s += row({std::to_string(++i), text(e.is_object() ? e.value("utc", none) : none), text(e.is_object() ? e.value("type", none) : none),
              a ? text(actor.value("role", none)) + " " + text(actor.value("id", none)) : "",
              "<span class=\"mono\">" + (a ? text(actor.value("key_fingerprint", none)) : "") + "</span>"});
  }
  s += "</table>";
  const json::Json receipt = ev.value("receipt", json::Json());
  if (receipt.is_object()) {
    const json::Json none, body = receipt.value("receipt", receipt);
    s += "<h3>Intake receipt</h3><table>";
    if (body.is_object())
      for (const auto& [k, v] : body.items()) s += row({esc(k), "<span class=\"mono\">" + text(v) + "</span>"});
    s += row({"signature", "<span class=\"mono\">" + text(receipt.value("signature", none)) + "</span>"}) + "</table>";
  } else {
    s += "<p>No intake receipt: the bundle was not read from an intake's evidence store.</p>";
  }
  return s + "</section>\n";
}

std::string neural_cleanse_html(const std::string& dir, const json::Json& r) {
  std::string s = "<h3>Neural Cleanse: " + text(r["model"]) + "</h3><p>median mask L1 " + num(r["median_l1"]) + ", MAD " +
                  num(r["mad"]) + ", anomaly threshold " + num(r["parameters"]["anomaly_threshold"]) + "; " +
                  num(r["clean_data"]["samples"]) + " clean samples, " + num(r["parameters"]["epochs"]) + " epochs max</p><table>" +
                  row({"class", "mask L1", "anomaly index", "attack success", "reversed trigger (mask, pattern, fusion)"}, "th");
  for (const auto& c : r["classes"]) {
    std::string imgs;
    for (const char* k : {"mask", "pattern", "fusion"})
      imgs += image(dir + "/" + c["images"].value(k, ""), std::string(k) + " of class " + c["class"].dump(), "trigger");
    std::string tr = row({num(c["class"]), num(c["mask_l1"]), num(c["anomaly_index"], 2),
                          num(c["attack_success"].get<double>() * 100, 1) + "%", imgs});
    if (c.value("flagged", false)) tr.replace(0, 4, "<tr class=\"flagged\">");
    s += tr;
  }
  return s + "</table>";
}

std::string weight_diff_html(const std::string& dir, const json::Json& r) {
  std::string s = "<h3>Weight diff: " + text(r["model"]) + " vs " + text(r["baseline"]) + "</h3><p>" +
                  num(r["changed_elements"]) + " of " + num(r["compared_elements"]) + " elements changed; added layers " +
                  text(r["added_layers"]) + ", missing layers " + text(r["missing_layers"]) + "</p><table>" +
                  row({"tensor", "changed", "L2 distance", "max |change|", "outlier neurons"}, "th");
  std::string maps;
  for (const auto& t : r["tensors"]) {
    if (!t.value("comparable", true)) {
      s += row({text(t["key"]), "shape/dtype changed", "", "", ""});
      continue;
    }
    if (t.value("changed", 0) == 0) continue;
    std::string outliers;
    for (const auto& n : t.value("neuron_outliers", json::Json::array())) outliers += n["neuron"].dump() + " ";
    s += row({text(t["key"]), num(t["changed"]) + " / " + num(t["elements"]), num(t["l2_distance"], 5),
              num(t["max_abs_change"], 5), outliers});
    if (t.contains("heat_map"))
      maps += "<div class=\"cell\">" + image(dir + "/" + t["heat_map"].get<std::string>(), "change of " + t["key"].get<std::string>(), "heat") +
              "<br>" + text(t["key"]) + "</div>";
  }
  return s + "</table><h3>Per-layer change heat maps (|change|, rows = output neurons)</h3><div class=\"grid\">" + maps + "</div>";
}

std::string differential_html(const json::Json& r) {
  std::string s = "<h3>Differential testing: A = " + text(r["model_a"]) + ", B = " + text(r["model_b"]) + "</h3><table>" +
                  row({"inputs", "samples", "decisions differ", "accuracy A", "accuracy B", "flips A&rarr;B"}, "th");
  for (const auto& set : r["input_sets"])
    s += row({text(set["inputs"]), num(set["samples"]), num(set["disagreements"]),
              set.contains("accuracy_a") ? num(set["accuracy_a"].get<double>() * 100, 1) + "%" : "",
              set.contains("accuracy_b") ? num(set["accuracy_b"].get<double>() * 100, 1) + "%" : "", text(set["flips"])});
  return s + "</table>";
}

}  // namespace

Result<std::string> render_html(const json::Json& r) {
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + text(r["title"]) +
                  "</title><style>" + kStyle + "</style></head><body>\n<header><h1>" + text(r["title"]) +
                  "</h1><div class=\"meta\">case " + text(r["case"]["id"]) +
                  (r["case"].value("examiner", "").empty() ? "" : " &middot; examiner " + text(r["case"]["examiner"])) +
                  " &middot; generated " + text(r["generated_utc"]) + " by " + text(r["tool"]["name"]) + " " +
                  text(r["tool"]["version"]) + "</div></header><main>\n";
  // The banner states each claim as build_report judged it; a check that did not run is said not
  // to have run, and the banner is green only when every claim was checked and passed.
  const json::Json none, verdict = r.value("verdict", json::Json::object());
  const std::string level = verdict.is_object() ? verdict.value("level", "caution") : "caution";
  h += "<div id=\"verdict\" class=\"" + std::string(level == "alert" ? "alert" : level == "clear" ? "clear" : "caution") + "\">";
  for (const auto& st : verdict.is_object() ? verdict.value("statements", json::Json::array()) : json::Json::array())
    h += "<div>" + text(st.is_object() ? st.value("text", none) : none) + "</div>";
  h += "</div>\n";
  h += "<section id=\"findings\"><h2>Findings</h2><ul>";
  for (const auto& f : r["findings"])
    h += "<li" + std::string(f.value("severity", "") == "high" ? " class=\"bad\"" : "") + ">" + text(f["text"]) + "</li>";
  if (r["findings"].empty()) h += "<li>No scans in this report.</li>";
  h += "</ul></section>\n";
  if (r.contains("device")) {
    const auto& d = r["device"];
    h += "<section id=\"device\"><h2>Device</h2><table>";
    for (const auto& [k, v] : d.items()) h += row({esc(k), "<span class=\"mono\">" + text(v) + "</span>"});
    h += "</table></section>\n";
  }
  if (r.contains("evidence")) h += evidence_html(r["evidence"]);
  h += "<section id=\"timeline\"><h2>Timeline</h2><table>" + row({"time (UTC)", "event", "by"}, "th");
  for (const auto& t : r["timeline"]) h += row({text(t["utc"]), text(t["event"]), "<span class=\"mono\">" + text(t["by"]) + "</span>"});
  h += "</table></section>\n";
  if (r.contains("recovery")) {
    const auto& rec = r["recovery"];
    h += "<section id=\"models\"><h2>Recovered models</h2><p>process " + text(rec["process"].value("command", json::Json())) +
         " (pid " + text(rec["process"].value("pid", json::Json())) + "), CPython " + text(rec["python"].value("version", json::Json())) +
         ", torch " + text(rec["torch"].value("version", json::Json())) + "</p><table>" +
         row({"directory", "class", "tensors", "parameters", "complete", "state_dict SHA-256"}, "th");
    for (const auto& m : rec["models"])
      h += row({text(m["directory"]), text(m["class"]), num(m["tensors"]), num(m["parameters"]),
                m.value("complete", false) ? "<span class=\"ok\">yes</span>" : "<span class=\"bad\">no</span>",
                "<span class=\"mono\">" + text(m.value("state_dict_sha256", json::Json())) + "</span>"});
    h += "</table></section>\n";
  }
  if (!r["rehosts"].empty()) {
    h += "<section id=\"rehost\"><h2>Rehosted models</h2><table>" +
         row({"directory", "class", "path", "equivalence with the reference", "TorchScript SHA-256"}, "th");
    for (const auto& e : r["rehosts"]) {
      const auto& x = e["result"];
      std::string eq = "not checked";
      if (x.contains("verification"))
        eq = x["verification"].value("equivalent", false) ? "<span class=\"ok\">bit-identical</span>" : "<span class=\"bad\">differs</span>";
      h += row({text(e["dir"]), text(x["class"]), text(x["path"]), eq,
                "<span class=\"mono\">" + text(x.value("torchscript_sha256", json::Json())) + "</span>"});
    }
    h += "</table>";
    for (const auto& e : r["rehosts"]) h += executed_code_html(e["dir"], e["result"].value("executed_code", json::Json()));
    h += "</section>\n";
  }
  if (!r["scans"].empty()) {
    h += "<section id=\"scans\"><h2>Scans</h2>";
    for (const auto& s : r["scans"]) {
      const std::string dir = s["dir"].get<std::string>(), kind = s["result"].value("scan", "");
      if (kind == "neural-cleanse") h += neural_cleanse_html(dir, s["result"]);
      else if (kind == "weight-diff") h += weight_diff_html(dir, s["result"]);
      else if (kind == "differential") h += differential_html(s["result"]);
    }
    h += "</section>\n";
  }
  h += "<section id=\"sources\"><h2>Sources and tool versions</h2><table>" + row({"file", "SHA-256"}, "th");
  for (const auto& f : r["sources"]) h += row({"<span class=\"mono\">" + text(f["path"]) + "</span>", "<span class=\"mono\">" + text(f["sha256"]) + "</span>"});
  h += "</table><p>Report by " + text(r["tool"]["name"]) + " " + text(r["tool"]["version"]) +
       "; scan parameters are in report.json.</p></section>\n</main></body></html>\n";
  return h;
}

}  // namespace mlfx::report
