// Reads and checks a bundle. open() parses and cross-checks the structure (header, record
// grammar, chunk tables against the records, manifest against both) without trusting
// anything; the verify_* calls then check signatures and hashes, and decrypt_stream()
// authenticates and decrypts. Nothing here ever writes to the bundle.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/manifest.h"
#include "mlfx/custody/custody_log.h"

namespace mlfx::bundle {

struct StreamLayout {
  std::vector<ChunkEntry> chunks;  // from the CTBL record, equal to the walk
  uint64_t table_offset = 0;
};

// A range of the file that is transferred or checked whole: the file header or one record.
struct Unit {
  uint64_t offset = 0, size = 0;
  bool operator==(const Unit&) const = default;
};

class BundleReader {
 public:
  static Result<BundleReader> open(const std::string& path);
  // Opens only the metadata of a bundle whose chunk records may not be there yet (an upload
  // in progress): `offsets` are those of the file header, every CTBL, MNFT, MSIG, CUST and END,
  // ascending, and the chunk tables must tile the gaps between them exactly. The structure,
  // signature and custody checks work as after open(); verify_chunks and decrypt_stream need
  // the chunks.
  static Result<BundleReader> open_metadata(const std::string& path, uint64_t file_size,
                                            const std::vector<uint64_t>& offsets);

  const FileHeader& header() const { return header_; }
  const Manifest& manifest() const { return manifest_; }
  const std::string& manifest_bytes() const { return manifest_bytes_; }
  const Bytes& signature() const { return signature_; }
  const custody::CustodyLog& custody() const { return custody_; }
  const std::vector<StreamLayout>& layout() const { return streams_; }
  uint64_t file_size() const { return file_size_; }
  // The file header and every record that is not a CHNK, in file order.
  const std::vector<Unit>& metadata_units() const { return units_; }
  // The bundle digest (bundle-format.md §18): hex SHA-256 of the metadata units in file order.
  // Through the chunk tables' record hashes it commits to every byte of the file, yet needs
  // only the metadata: the name of a bundle in the spool and in the intake's store.
  Result<std::string> digest() const;
  const std::string& path() const { return file_.path(); }

  // The manifest's signature by the device key it names. Trust in that key is separate.
  Status verify_signature() const;
  // SHA-256 of every sealed chunk record against the signed chunk tables, on every core.
  // The error is that of the first altered chunk in file order.
  Status verify_chunks(Progress* progress) const;
  // The custody chain: links, signatures, and that it holds exactly the device's
  // acquisition and seal of this manifest.
  Result<custody::ChainReport> verify_custody() const;

  // The data key, unwrapped with the lab key and checked against the manifest commitment.
  Result<SecretBytes> unwrap_data_key(const crypto::BoxSecretKey& lab) const;
  // Authenticates and decrypts stream `index`, handing each chunk's plaintext to `sink`
  // in order; then checks the stream's size and hashes against the manifest. A sink must
  // treat what it received as unverified until this returns success. Chunks are checked and
  // decrypted on every core, a few at a time; `sink` and `progress` are called in order, one
  // call at a time, from any of these threads, and never for a chunk at or after the first
  // that fails its checks.
  Status decrypt_stream(size_t index, ByteView data_key,
                        const std::function<Status(ByteView)>& sink, Progress* progress) const;
  // The same with a sink that takes each authenticated chunk's plaintext with its offset in
  // the stream, in any order and from several threads at once (e.g. pwrite into a file), so
  // that writing the output runs on every core too. It may get chunks that follow one that
  // fails; all of it is unverified until this returns success. `progress` is called as above.
  Status decrypt_stream_at(size_t index, ByteView data_key,
                           const std::function<Status(uint64_t offset, ByteView)>& sink,
                           Progress* progress) const;

 private:
  Status walk();
  Status walk_metadata(const std::vector<uint64_t>& offsets);
  Status read_file_header();
  Result<RecordHeader> read_record_header(uint64_t off, Bytes* raw) const;
  Result<std::string> read_payload(const RecordHeader& h, uint64_t record_off, size_t limit,
                                   const std::string& what) const;
  Status take_chunk_table(const RecordHeader& h, ByteView raw_header, uint64_t off, uint32_t stream,
                          size_t chunks, const std::function<Status(size_t, const ChunkEntry&)>& check_entry);
  Status take_trailer(uint64_t off);
  Result<size_t> read_checked_record(uint32_t stream, size_t chunk, uint8_t* buf) const;
  Status decrypt(size_t index, ByteView data_key, const std::function<Status(ByteView)>& in_order,
                 const std::function<Status(uint64_t, ByteView)>& at_offset, Progress* progress) const;
  Status cross_check();
  std::string stream_label(uint32_t index) const;

  File file_;
  uint64_t file_size_ = 0;
  FileHeader header_;
  Manifest manifest_;
  std::string manifest_bytes_;
  Bytes signature_;
  custody::CustodyLog custody_{""};
  std::vector<StreamLayout> streams_;
  std::vector<std::string> table_sha256_;  // per stream, of the CTBL record as found
  std::vector<Unit> units_;                 // metadata units, in file order
};

}  // namespace mlfx::bundle
