#include "pki/lab_ca.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/crypto/aead.h"
#include "mlfx/crypto/hash.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::pki {

namespace {

constexpr const char* kKeyFile = "ca.key";
constexpr const char* kCertFile = "ca.pem";
constexpr const char* kCrlFile = "crl.pem";
constexpr const char* kIndexFile = "index.jsonl";
constexpr const char* kCertsDir = "certs";
constexpr size_t kSerialBytes = 16;
constexpr size_t kMaxIdLength = 64;
constexpr size_t kMaxFileSize = 16 * 1024 * 1024;
constexpr int64_t kDaySeconds = 86400;
constexpr const char* kDeviceUriPrefix = "URI:mlfx:device:";

// RFC 5280 CRLReason names, as `--reason` may spell them.
struct ReasonName {
  const char* name;
  int code;
};
constexpr ReasonName kReasons[] = {
    {"unspecified", CRL_REASON_UNSPECIFIED},
    {"keyCompromise", CRL_REASON_KEY_COMPROMISE},
    {"cACompromise", CRL_REASON_CA_COMPROMISE},
    {"affiliationChanged", CRL_REASON_AFFILIATION_CHANGED},
    {"superseded", CRL_REASON_SUPERSEDED},
    {"cessationOfOperation", CRL_REASON_CESSATION_OF_OPERATION},
    {"privilegeWithdrawn", CRL_REASON_PRIVILEGE_WITHDRAWN},
};

template <class T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using CrlPtr = std::unique_ptr<X509_CRL, Deleter<X509_CRL, X509_CRL_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using IntPtr = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER, ASN1_INTEGER_free>>;
using TimePtr = std::unique_ptr<ASN1_TIME, Deleter<ASN1_TIME, ASN1_TIME_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;

tl::unexpected<Error> ssl_fail(const std::string& what) {
  return fail(Errc::kCrypto, what + ": " + crypto::openssl_error());
}

std::string join(const std::string& dir, const char* name) { return dir + "/" + name; }

std::string iso_time(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm;
  gmtime_r(&tt, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<DirLock> lock_ca_dir(const std::string& dir) {
  auto lock = DirLock::acquire(dir);
  if (!lock && lock.error().code() == Errc::kNotFound)
    return fail(Errc::kNotFound, lock.error().message() + "; create one with 'mlfx ca init --out " + dir + "'");
  return lock;
}

// ---- PEM ----

Result<std::string> to_pem(int (*write)(BIO*, void*), void* obj, const char* what) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get(), obj) != 1) return ssl_fail(std::string("cannot encode ") + what);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

Result<std::string> cert_pem(X509* x) {
  return to_pem([](BIO* b, void* o) { return PEM_write_bio_X509(b, static_cast<X509*>(o)); }, x,
                "certificate");
}

Result<std::string> crl_pem(X509_CRL* c) {
  return to_pem([](BIO* b, void* o) { return PEM_write_bio_X509_CRL(b, static_cast<X509_CRL*>(o)); },
                c, "CRL");
}

Result<X509Ptr> parse_cert(std::string_view pem, const std::string& origin) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return fail(Errc::kCrypto, "out of memory");
  X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!x) return fail(Errc::kBadFormat, origin + " is not a PEM certificate");
  return x;
}

Result<CrlPtr> parse_crl(std::string_view pem, const std::string& origin) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return fail(Errc::kCrypto, "out of memory");
  CrlPtr c(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!c) return fail(Errc::kBadFormat, origin + " is not a PEM CRL");
  return c;
}

Result<std::string> spki_fingerprint(EVP_PKEY* p) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(p, &der);
  if (n <= 0) return ssl_fail("cannot encode public key");
  std::string fp = "sha256:" + crypto::sha256_hex({der, static_cast<size_t>(n)});
  OPENSSL_free(der);
  return fp;
}

// ---- names and extensions ----

bool valid_device_id(const std::string& id) {
  if (id.empty() || id.size() > kMaxIdLength) return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == '-';
  });
}

bool valid_dns_name(const std::string& name) {
  if (name.empty() || name.size() > 253 || name.front() == '.' || name.back() == '.') return false;
  if (name.find("..") != std::string::npos) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '-';
  });
}

bool is_ip_address(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

Result<X509_NAME*> common_name(const std::string& cn) {
  X509_NAME* name = X509_NAME_new();
  if (!name || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                          reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                          0) != 1) {
    X509_NAME_free(name);
    return ssl_fail("cannot build name CN=" + cn);
  }
  return name;
}

// Adds one extension written in OpenSSL's config syntax; the values are built here from
// checked ids and names, never from raw user text.
Status add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
    return ssl_fail(std::string("cannot add extension ") + OBJ_nid2sn(nid) + "=" + value);
  return {};
}

Result<IntPtr> random_serial(std::string* hex) {
  Bytes raw = crypto::random_bytes(kSerialBytes);
  // Positive, and always 16 bytes with a nonzero first digit, so hex forms compare as text.
  raw[0] = static_cast<uint8_t>((raw[0] & 0x7f) | 0x10);
  BnPtr bn(BN_bin2bn(raw.data(), static_cast<int>(raw.size()), nullptr));
  IntPtr serial(bn ? BN_to_ASN1_INTEGER(bn.get(), nullptr) : nullptr);
  if (!serial) return ssl_fail("cannot make a serial number");
  *hex = to_hex(raw);
  return serial;
}

Result<std::string> serial_hex(const ASN1_INTEGER* serial) {
  BnPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return ssl_fail("cannot read serial number");
  char* h = BN_bn2hex(bn.get());
  if (!h) return ssl_fail("cannot read serial number");
  std::string s(h);
  OPENSSL_free(h);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Accepts "AB:CD...", "0xabcd...", any case; gives the index's form (no leading zeros).
Result<std::string> normalize_serial(const std::string& text) {
  std::string s;
  for (char c : text)
    if (c != ':') s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s.rfind("0x", 0) == 0) s = s.substr(2);
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c); }))
    return fail(Errc::kInvalidArgument, "serial '" + text + "' is not a hexadecimal number");
  s.erase(0, std::min(s.find_first_not_of('0'), s.size() - 1));
  return s;
}

Status set_validity(X509* x, int64_t not_before, int64_t not_after) {
  TimePtr nb(ASN1_TIME_set(nullptr, static_cast<time_t>(not_before)));
  TimePtr na(ASN1_TIME_set(nullptr, static_cast<time_t>(not_after)));
  if (!nb || !na || X509_set1_notBefore(x, nb.get()) != 1 || X509_set1_notAfter(x, na.get()) != 1)
    return ssl_fail("cannot set validity");
  return {};
}

// ---- the CA's own material ----

struct Ca {
  std::string dir;
  X509Ptr cert;
  PkeyPtr key;
};

int no_pass_phrase(char*, int, int, void*) { return -1; }

// The EVP_PKEY of a private key file (keys.h keeps its own inside SigningKey).
Result<PkeyPtr> read_private_key(const std::string& path) {
  MLFX_ASSIGN(std::string pem, read_small_file(path, 64 * 1024));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PkeyPtr key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_pass_phrase, nullptr) : nullptr);
  secure_zero(pem.data(), pem.size());
  if (!key) return ssl_fail("cannot read " + path);
  return key;
}

Result<Ca> load_ca(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(Errc::kNotFound, dir + " is not a CA directory; create one with 'mlfx ca init --out " +
                                     dir + "'");
  const std::string key_path = join(dir, kKeyFile), cert_path = join(dir, kCertFile);
  // The mode check, format check and key kind of an mlfx private key file.
  MLFX_ASSIGN(crypto::SecretKeyFile key_file, crypto::load_secret_key_file(key_path));
  if (key_file.kind != crypto::KeyKind::kDevice)
    return fail(Errc::kBadFormat, key_path + " is not a CA key (expected one Ed25519 key)");
  MLFX_ASSIGN(PkeyPtr key, read_private_key(key_path));
  MLFX_ASSIGN(std::string pem, read_small_file(cert_path, 64 * 1024));
  MLFX_ASSIGN(X509Ptr cert, parse_cert(pem, cert_path));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return fail(Errc::kCorrupt, key_path + " is not the key of " + cert_path);
  }
  return Ca{dir, std::move(cert), std::move(key)};
}

// ---- index ----

json::Json entry_to_json(const IndexEntry& e) {
  json::Json j = {{"serial", e.serial},         {"kind", cert_kind_name(e.kind)},
                  {"id", e.id},                 {"key_fingerprint", e.key_fingerprint},
                  {"not_before", e.not_before}, {"not_after", e.not_after},
                  {"revoked_utc", nullptr},     {"reason", nullptr}};
  if (e.revoked_utc) j["revoked_utc"] = *e.revoked_utc;
  if (e.reason) j["reason"] = *e.reason;
  return j;
}

Result<IndexEntry> entry_from_json(const json::Json& j, const std::string& where) {
  IndexEntry e;
  MLFX_ASSIGN(e.serial, json::get_string(j, "serial", where));
  MLFX_ASSIGN(std::string kind, json::get_string(j, "kind", where));
  if (kind == "device") {
    e.kind = CertKind::kDevice;
  } else if (kind == "server") {
    e.kind = CertKind::kServer;
  } else {
    return fail(Errc::kBadFormat, where + ": unknown kind '" + kind + "'");
  }
  MLFX_ASSIGN(e.id, json::get_string(j, "id", where));
  MLFX_ASSIGN(e.key_fingerprint, json::get_string(j, "key_fingerprint", where));
  MLFX_ASSIGN(e.not_before, json::get_string(j, "not_before", where));
  MLFX_ASSIGN(e.not_after, json::get_string(j, "not_after", where));
  MLFX_ASSIGN(e.revoked_utc, json::get_optional_string(j, "revoked_utc", where));
  MLFX_ASSIGN(e.reason, json::get_optional_string(j, "reason", where));
  return e;
}

Result<std::vector<IndexEntry>> read_index(const std::string& dir) {
  const std::string path = join(dir, kIndexFile);
  MLFX_ASSIGN(std::string text, read_small_file(path, kMaxFileSize));
  std::vector<IndexEntry> entries;
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line;
    std::string_view l(text.data() + pos, end - pos);
    pos = end + 1;
    if (l.empty()) continue;
    const std::string where = path + " line " + std::to_string(line);
    MLFX_ASSIGN(json::Json j, json::parse(l, where));
    MLFX_ASSIGN(IndexEntry e, entry_from_json(j, where));
    entries.push_back(std::move(e));
  }
  return entries;
}

Status write_index(const std::string& dir, const std::vector<IndexEntry>& entries) {
  std::string text;
  for (const auto& e : entries) text += json::canonical(entry_to_json(e)) + "\n";
  return replace_file(dir + "/" + kIndexFile, text, 0644);
}

// ---- CRL ----

int reason_code(const std::string& reason) {
  for (const auto& r : kReasons)
    if (strcasecmp(r.name, reason.c_str()) == 0) return r.code;
  return -1;
}

Result<int64_t> parse_iso_time(const std::string& s) {
  struct tm tm = {};
  const char* end = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!end || *end) return fail(Errc::kBadFormat, "bad time '" + s + "' in the index");
  return static_cast<int64_t>(timegm(&tm));
}

// The number the next CRL gets: one more than the current crl.pem's (1 for the first).
Result<int64_t> next_crl_number(const std::string& dir) {
  const std::string path = join(dir, kCrlFile);
  if (access(path.c_str(), F_OK) != 0) return 1;
  MLFX_ASSIGN(std::string pem, read_small_file(path, kMaxFileSize));
  MLFX_ASSIGN(CrlPtr crl, parse_crl(pem, path));
  IntPtr number(static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, nullptr, nullptr)));
  int64_t n = 0;
  if (!number || ASN1_INTEGER_get_int64(&n, number.get()) != 1 || n < 0)
    return fail(Errc::kBadFormat, path + " has no usable CRL number");
  return n + 1;
}

// Signs a CRL of every revoked entry of the index and replaces crl.pem.
Status publish_crl(const Ca& ca, const std::vector<IndexEntry>& entries) {
  MLFX_ASSIGN(int64_t number, next_crl_number(ca.dir));
  CrlPtr crl(X509_CRL_new());
  if (!crl) return ssl_fail("cannot make a CRL");
  const int64_t now = time(nullptr);
  TimePtr last(ASN1_TIME_set(nullptr, static_cast<time_t>(now)));
  TimePtr next(ASN1_TIME_set(nullptr, static_cast<time_t>(now + kCrlDays * kDaySeconds)));
  if (X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca.cert.get())) != 1 || !last ||
      !next || X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1)
    return ssl_fail("cannot fill the CRL");
  for (const auto& e : entries) {
    if (!e.revoked_utc) continue;
    X509_REVOKED* r = X509_REVOKED_new();
    BIGNUM* bn_raw = nullptr;
    if (!r || BN_hex2bn(&bn_raw, e.serial.c_str()) == 0) {
      X509_REVOKED_free(r);
      return fail(Errc::kBadFormat, "bad serial '" + e.serial + "' in the index");
    }
    BnPtr bn(bn_raw);
    IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    auto when = parse_iso_time(*e.revoked_utc);
    TimePtr date(when ? ASN1_TIME_set(nullptr, static_cast<time_t>(*when)) : nullptr);
    bool ok = serial && date && X509_REVOKED_set_serialNumber(r, serial.get()) == 1 &&
              X509_REVOKED_set_revocationDate(r, date.get()) == 1;
    if (ok && e.reason && reason_code(*e.reason) >= 0) {
      ASN1_ENUMERATED* code = ASN1_ENUMERATED_new();
      ok = code && ASN1_ENUMERATED_set(code, reason_code(*e.reason)) == 1 &&
           X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, code, 0, 0) == 1;
      ASN1_ENUMERATED_free(code);
    }
    if (!ok || X509_CRL_add0_revoked(crl.get(), r) != 1) {
      X509_REVOKED_free(r);
      if (!when) return fail(std::move(when).error());
      return ssl_fail("cannot add serial " + e.serial + " to the CRL");
    }
  }
  X509_CRL_sort(crl.get());
  IntPtr num(ASN1_INTEGER_new());
  if (!num || ASN1_INTEGER_set_int64(num.get(), number) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, num.get(), 0, 0) != 1)
    return ssl_fail("cannot set the CRL number");
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), nullptr, nullptr, crl.get(), 0);
  ExtPtr aki(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!aki || X509_CRL_add_ext(crl.get(), aki.get(), -1) != 1) return ssl_fail("cannot add the CRL's AKI");
  // Ed25519 takes no separate digest.
  if (X509_CRL_sign(crl.get(), ca.key.get(), nullptr) <= 0) return ssl_fail("cannot sign the CRL");
  MLFX_ASSIGN(std::string pem, crl_pem(crl.get()));
  return replace_file(ca.dir + "/" + kCrlFile, pem, 0644);
}

Status ensure_empty_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) == 0) return {};
  if (errno != EEXIST) return fail(Errc::kIo, "cannot create " + dir + ": " + errno_text(errno));
  DIR* d = opendir(dir.c_str());
  if (!d) return fail(Errc::kIo, "cannot open " + dir + ": " + errno_text(errno));
  bool empty = true;
  while (dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = false;
  }
  closedir(d);
  if (!empty)
    return fail(Errc::kExists, dir + " exists and is not empty; refusing to create a CA over it "
                                     "(choose a new directory)");
  return {};
}

}  // namespace

const char* cert_kind_name(CertKind k) { return k == CertKind::kDevice ? "device" : "server"; }

Status init_ca(const CaInitOptions& o) {
  if (o.days < 1) return fail(Errc::kInvalidArgument, "--days must be at least 1");
  if (o.name.empty() || o.name.size() > kMaxIdLength)
    return fail(Errc::kInvalidArgument, "CA name must be 1 to 64 characters");
  MLFX_TRY(ensure_empty_dir(o.dir));
  MLFX_ASSIGN(DirLock lock, lock_ca_dir(o.dir));
  // The key is written the way `mlfx keys gen --kind device` writes one: 0600, never replaced.
  MLFX_TRY(crypto::generate_key_files(crypto::KeyKind::kDevice, join(o.dir, "ca")));
  unlink(join(o.dir, "ca.pub").c_str());  // ca.pem carries the public key
  Ca ca{o.dir, nullptr, nullptr};
  MLFX_ASSIGN(ca.key, read_private_key(join(o.dir, kKeyFile)));
  X509Ptr cert(X509_new());
  std::string serial_text;
  MLFX_ASSIGN(IntPtr serial, random_serial(&serial_text));
  MLFX_ASSIGN(X509_NAME* name, common_name(o.name));
  const int64_t now = time(nullptr);
  bool ok = cert && X509_set_version(cert.get(), X509_VERSION_3) == 1 &&
            X509_set_serialNumber(cert.get(), serial.get()) == 1 &&
            X509_set_subject_name(cert.get(), name) == 1 && X509_set_issuer_name(cert.get(), name) == 1 &&
            X509_set_pubkey(cert.get(), ca.key.get()) == 1;
  X509_NAME_free(name);
  if (!ok) return ssl_fail("cannot build the CA certificate");
  MLFX_TRY(set_validity(cert.get(), now - kClockSkewSeconds, now + o.days * kDaySeconds));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), ca.key.get(), nullptr) <= 0) return ssl_fail("cannot sign the CA certificate");
  MLFX_ASSIGN(std::string pem, cert_pem(cert.get()));
  MLFX_TRY(write_new_file(join(o.dir, kCertFile), pem, 0644));
  ca.cert = std::move(cert);
  if (mkdir(join(o.dir, kCertsDir).c_str(), 0755) != 0)
    return fail(Errc::kIo, "cannot create " + join(o.dir, kCertsDir) + ": " + errno_text(errno));
  MLFX_TRY(write_new_file(join(o.dir, kIndexFile), "", 0644));
  MLFX_TRY(publish_crl(ca, {}));
  return fsync_dir(o.dir);
}

Result<IndexEntry> issue_certificate(const std::string& ca_dir, const IssueOptions& o) {
  if (o.days < 1) return fail(Errc::kInvalidArgument, "--days must be at least 1");
  if (o.out.empty()) return fail(Errc::kInvalidArgument, "no output file given");
  if (access(o.out.c_str(), F_OK) == 0)
    return fail(Errc::kExists, o.out + " already exists; refusing to overwrite a certificate");
  IndexEntry entry;
  entry.kind = o.kind;
  std::string san;
  if (o.kind == CertKind::kDevice) {
    if (!valid_device_id(o.id))
      return fail(Errc::kInvalidArgument,
                  "device id '" + o.id + "' must be 1 to 64 letters, digits, '.', '_' or '-'");
    entry.id = o.id;
    san = kDeviceUriPrefix + o.id;
  } else {
    if (o.names.empty()) return fail(Errc::kInvalidArgument, "a server certificate needs at least one --name");
    for (const auto& n : o.names) {
      if (is_ip_address(n)) {
        san += (san.empty() ? "" : ",") + std::string("IP:") + n;
      } else if (valid_dns_name(n)) {
        san += (san.empty() ? "" : ",") + std::string("DNS:") + n;
      } else {
        return fail(Errc::kInvalidArgument, "server name '" + n + "' is neither a DNS name nor an IP address");
      }
      entry.id += (entry.id.empty() ? "" : ",") + n;
    }
  }
  // The subject's key: an mlfx Ed25519 signing key, not a lab key.
  MLFX_ASSIGN(crypto::PublicKeyFile pub, crypto::load_public_key_file(o.public_key_path));
  if (pub.kind != crypto::KeyKind::kDevice)
    return fail(Errc::kInvalidArgument,
                o.public_key_path + " is a lab key; certificates are issued for device-kind keys only (" +
                    (o.kind == CertKind::kDevice ? "use the device's .pub"
                                                 : "make the intake key with 'mlfx keys gen --kind device'") +
                    ")");
  const Bytes& raw = pub.verify->raw();
  PkeyPtr subject_key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw.data(), raw.size()));
  if (!subject_key) return ssl_fail("cannot use " + o.public_key_path);
  entry.key_fingerprint = pub.verify->fingerprint();

  MLFX_ASSIGN(DirLock lock, lock_ca_dir(ca_dir));
  MLFX_ASSIGN(Ca ca, load_ca(ca_dir));
  MLFX_ASSIGN(std::vector<IndexEntry> entries, read_index(ca_dir));
  IntPtr serial;
  for (int tries = 0; tries < 8 && !serial; ++tries) {
    MLFX_ASSIGN(serial, random_serial(&entry.serial));
    for (const auto& e : entries)
      if (e.serial == entry.serial) serial.reset();
  }
  if (!serial) return fail(Errc::kCrypto, "cannot find an unused serial number");

  const int64_t not_before = o.not_before ? *o.not_before : time(nullptr) - kClockSkewSeconds;
  const int64_t not_after = not_before + kClockSkewSeconds + o.days * kDaySeconds;
  entry.not_before = iso_time(not_before);
  entry.not_after = iso_time(not_after);
  X509Ptr cert(X509_new());
  MLFX_ASSIGN(X509_NAME* name, common_name(o.kind == CertKind::kDevice ? o.id : o.names.front()));
  bool ok = cert && X509_set_version(cert.get(), X509_VERSION_3) == 1 &&
            X509_set_serialNumber(cert.get(), serial.get()) == 1 &&
            X509_set_subject_name(cert.get(), name) == 1 &&
            X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.cert.get())) == 1 &&
            X509_set_pubkey(cert.get(), subject_key.get()) == 1;
  X509_NAME_free(name);
  if (!ok) return ssl_fail("cannot build the certificate");
  MLFX_TRY(set_validity(cert.get(), not_before, not_after));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), cert.get(), nullptr, nullptr, 0);
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_ext_key_usage,
                   o.kind == CertKind::kDevice ? "clientAuth" : "serverAuth"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_subject_alt_name, san));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  MLFX_TRY(add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(cert.get(), ca.key.get(), nullptr) <= 0) return ssl_fail("cannot sign the certificate");
  MLFX_ASSIGN(std::string pem, cert_pem(cert.get()));

  // Recorded before it is handed out, so every certificate that exists can be revoked.
  entries.push_back(entry);
  MLFX_TRY(write_index(ca_dir, entries));
  MLFX_TRY(write_new_file(join(ca_dir, kCertsDir) + "/" + entry.serial + ".pem", pem, 0644));
  MLFX_TRY(write_new_file(o.out, pem, 0644));
  return entry;
}

Result<IndexEntry> revoke_certificate(const std::string& ca_dir, const RevokeTarget& target,
                                      const std::string& reason) {
  if (target.serial.has_value() == target.certificate_pem.has_value())
    return fail(Errc::kInvalidArgument, "give exactly one of a serial or a certificate to revoke");
  MLFX_ASSIGN(DirLock lock, lock_ca_dir(ca_dir));
  MLFX_ASSIGN(Ca ca, load_ca(ca_dir));
  std::string serial;
  if (target.serial) {
    MLFX_ASSIGN(serial, normalize_serial(*target.serial));
  } else {
    MLFX_ASSIGN(X509Ptr cert, parse_cert(*target.certificate_pem, "the certificate to revoke"));
    EVP_PKEY* ca_pub = X509_get0_pubkey(ca.cert.get());
    if (!ca_pub || X509_verify(cert.get(), ca_pub) != 1) {
      ERR_clear_error();
      return fail(Errc::kUntrusted, "the certificate to revoke was not issued by the CA in " + ca_dir);
    }
    MLFX_ASSIGN(serial, serial_hex(X509_get0_serialNumber(cert.get())));
  }
  MLFX_ASSIGN(std::vector<IndexEntry> entries, read_index(ca_dir));
  auto it = std::find_if(entries.begin(), entries.end(), [&](const IndexEntry& e) {
    auto n = normalize_serial(e.serial);
    return n && *n == serial;
  });
  if (it == entries.end())
    return fail(Errc::kNotFound, "serial " + serial + " is not in " + join(ca_dir, kIndexFile) +
                                     "; see 'mlfx ca list --ca " + ca_dir + "'");
  if (it->revoked_utc)
    return fail(Errc::kExists, "serial " + it->serial + " (" + it->id + ") was already revoked at " +
                                   *it->revoked_utc + "; nothing to do");
  it->revoked_utc = iso_time(time(nullptr));
  it->reason = reason.empty() ? "unspecified" : reason;
  // CRL first: a crash between the two leaves the index unrevoked, and revoking again repairs it.
  MLFX_TRY(publish_crl(ca, entries));
  MLFX_TRY(write_index(ca_dir, entries));
  return *it;
}

Status refresh_crl(const std::string& ca_dir) {
  MLFX_ASSIGN(DirLock lock, lock_ca_dir(ca_dir));
  MLFX_ASSIGN(Ca ca, load_ca(ca_dir));
  MLFX_ASSIGN(std::vector<IndexEntry> entries, read_index(ca_dir));
  return publish_crl(ca, entries);
}

Result<std::vector<IndexEntry>> list_certificates(const std::string& ca_dir) {
  struct stat st;
  if (stat(join(ca_dir, kCertFile).c_str(), &st) != 0)
    return fail(Errc::kNotFound, ca_dir + " is not a CA directory (no " + kCertFile +
                                     "); create one with 'mlfx ca init --out " + ca_dir + "'");
  return read_index(ca_dir);
}

Result<std::string> certificate_key_fingerprint(const std::string& pem) {
  MLFX_ASSIGN(X509Ptr cert, parse_cert(pem, "the certificate"));
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  if (!key) return ssl_fail("the certificate has no usable public key");
  return spki_fingerprint(key);
}

}  // namespace mlfx::pki
