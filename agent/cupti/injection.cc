// The CUPTI injection library's entry point and its CUDA glue: the only file that sees CUDA or
// CUPTI headers. The driver loads libmlfx_cupti.so from CUDA_INJECTION64_PATH at cuInit and calls
// InitializeInjection; it subscribes to the driver API (allocations, VMM, every call's result)
// and to context creation and destruction, and hands all of it to the Recorder (recorder.h).
// libcupti is dlopen()ed here rather than linked, so the library loads anywhere and says in its
// log why it could not subscribe; driver functions come from the libcuda the process has loaded.
//
// It runs inside a production CUDA process: nothing here may throw into the driver, block an
// application thread for long, or grow without bound.
#include <cuda.h>
#include <cupti.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "cupti/callbacks.h"
#include "cupti/copy_out.h"
#include "cupti/json_line.h"
#include "cupti/recorder.h"
#include "cupti/trigger.h"

namespace mlfx::cupti {
namespace {

struct CuptiApi {
  decltype(&cuptiSubscribe) subscribe = nullptr;
  decltype(&cuptiEnableCallback) enable_callback = nullptr;
  decltype(&cuptiEnableDomain) enable_domain = nullptr;
  decltype(&cuptiGetResultString) result_string = nullptr;
  decltype(&cuptiGetDeviceId) device_id = nullptr;
};

struct DriverApi {  // resolved from the libcuda the process loaded (the stubs name them so)
  decltype(&cuCtxSetCurrent) ctx_set_current = nullptr;
  decltype(&cuMemcpyDtoH_v2) memcpy_dtoh = nullptr;
  decltype(&cuMemHostAlloc) host_alloc = nullptr;
  decltype(&cuMemFreeHost) free_host = nullptr;
  decltype(&cuDeviceGet) device_get = nullptr;
  decltype(&cuDeviceGetName) device_name = nullptr;
  decltype(&cuDeviceGetAttribute) device_attribute = nullptr;
  decltype(&cuDriverGetVersion) driver_version = nullptr;
};

// Leaked on purpose: the trigger thread and late driver callbacks may outlive static destructors.
Recorder* g_recorder = nullptr;
CuptiApi g_cupti;
DriverApi g_driver;
bool g_call_sites = true;
const void* g_skip_bases[3] = {};  // this library, libcupti, libcuda: never the call site

// Set on the library's own threads (the copy-out): their driver calls are not the application's.
thread_local bool t_ours = false;

std::string cupti_error(CUptiResult rc) {
  const char* s = nullptr;
  if (g_cupti.result_string && g_cupti.result_string(rc, &s) == CUPTI_SUCCESS && s) return s;
  return "CUptiResult " + std::to_string(static_cast<int>(rc));
}

template <typename F>
bool resolve(void* handle, const char* name, F* out) {
  void* sym = handle ? ::dlsym(handle, name) : nullptr;
  if (!sym) sym = ::dlsym(RTLD_DEFAULT, name);
  *out = reinterpret_cast<F>(sym);
  return sym != nullptr;
}

// The first frame of the stack outside the driver, CUPTI, the CUDA runtime and this library:
// the application's (or its framework's) call.
uint64_t application_return_address() {
  if (!g_call_sites) return 0;
  void* frames[32];
  const int n = ::backtrace(frames, 32);
  for (int i = 1; i < n; ++i) {
    Dl_info info{};
    if (::dladdr(frames[i], &info) == 0) return reinterpret_cast<uint64_t>(frames[i]);
    bool skip = false;
    for (const void* base : g_skip_bases) skip = skip || (base && base == info.dli_fbase);
    if (!skip && info.dli_fname && std::strstr(info.dli_fname, "libcudart")) skip = true;
    if (!skip) return reinterpret_cast<uint64_t>(frames[i]);
  }
  return 0;
}

const CallbackHooks& hooks() {
  static const CallbackHooks h{g_recorder, application_return_address, g_cupti.device_id};
  return h;
}

void CUPTIAPI on_callback(void*, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                          const void* data) {
  if (t_ours || !g_recorder || !data) return;
  try {
    if (domain == CUPTI_CB_DOMAIN_DRIVER_API) {
      auto* d = static_cast<const CUpti_CallbackData*>(data);
      if (d->callbackSite == CUPTI_API_EXIT && d->functionReturnValue)
        on_driver_exit(hooks(), cbid, d);
    } else if (domain == CUPTI_CB_DOMAIN_RESOURCE) {
      on_resource(hooks(), cbid, static_cast<const CUpti_ResourceData*>(data));
    }
  } catch (...) {  // (std::bad_alloc) never into the driver: the event is lost, the process goes on
  }
}

// Device memory through the driver: cuMemcpyDtoH in the range's context into a pinned buffer
// that lives for one copy-out (pinned memory dies with its context; the next copy-out may find
// that context gone).
class DriverReader final : public DeviceReader {
 public:
  static constexpr size_t kChunk = 8 << 20;
  ~DriverReader() override {
    if (pinned_ && g_driver.free_host)
      g_driver.free_host(buffer_);
    else
      std::free(buffer_);
  }
  size_t chunk_size() const override { return kChunk; }
  const uint8_t* read(uint64_t context, uint64_t address, size_t len, std::string* error) override {
    if (!g_driver.ctx_set_current || !g_driver.memcpy_dtoh) {
      *error = "cuCtxSetCurrent/cuMemcpyDtoH_v2 not found in the process";
      return nullptr;
    }
    if (context != current_) {
      const CUresult rc = g_driver.ctx_set_current(reinterpret_cast<CUcontext>(context));
      if (rc != CUDA_SUCCESS) return fail("cuCtxSetCurrent", rc, error);
      current_ = context;
    }
    if (!buffer()) {
      *error = "no host buffer of 8 MiB";
      return nullptr;
    }
    const CUresult rc = g_driver.memcpy_dtoh(buffer_, address, len);
    if (rc != CUDA_SUCCESS) return fail("cuMemcpyDtoH", rc, error);
    return static_cast<const uint8_t*>(buffer_);
  }

 private:
  void* buffer() {  // once a context is current: pinned (full copy speed), else pageable
    if (buffer_) return buffer_;
    if (g_driver.host_alloc && g_driver.free_host &&
        g_driver.host_alloc(&buffer_, kChunk, CU_MEMHOSTALLOC_PORTABLE) == CUDA_SUCCESS) {
      pinned_ = true;
      return buffer_;
    }
    buffer_ = std::malloc(kChunk);
    return buffer_;
  }
  static const uint8_t* fail(const char* api, CUresult rc, std::string* error) {
    const char* name = cuda_error_name(static_cast<int>(rc));
    *error = std::string(api) + ": " + (name ? name : std::to_string(static_cast<int>(rc)));
    return nullptr;
  }
  void* buffer_ = nullptr;
  bool pinned_ = false;
  uint64_t current_ = 0;
};

DumpTables dump_tables(const std::vector<ContextInfoRecord>& contexts) {
  DumpTables t;
  t.meta.generator = std::string("mlfx-cupti ") + kVersion;
  t.meta.timestamp = static_cast<uint32_t>(::time(nullptr));
  int version = 0;
  if (g_driver.driver_version && g_driver.driver_version(&version) == CUDA_SUCCESS) {
    t.meta.cuda_major = static_cast<uint32_t>(version / 1000);
    t.meta.cuda_minor = static_cast<uint32_t>(version % 1000 / 10);
  }
  std::map<int, uint32_t> rows;  // device ordinal -> device table row
  for (const auto& c : contexts) {
    if (c.device < 0) continue;
    auto [it, added] = rows.emplace(c.device, static_cast<uint32_t>(t.devices.size()));
    if (added) {
      cudacore::DeviceInfo dev;
      dev.dev_id = static_cast<uint32_t>(c.device);
      CUdevice handle = 0;
      if (g_driver.device_get && g_driver.device_get(&handle, c.device) == CUDA_SUCCESS) {
        char name[256] = {};
        if (g_driver.device_name &&
            g_driver.device_name(name, sizeof name - 1, handle) == CUDA_SUCCESS)
          dev.name = name;
        auto attr = [&](CUdevice_attribute a) {
          int v = 0;
          return g_driver.device_attribute &&
                         g_driver.device_attribute(&v, a, handle) == CUDA_SUCCESS
                     ? static_cast<uint32_t>(v)
                     : 0u;
        };
        dev.pci_bus_id = attr(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID);
        dev.pci_dev_id = attr(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID);
        dev.num_sms = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        dev.sm_major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        dev.sm_minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        dev.sm_type = "sm_" + std::to_string(dev.sm_major) + std::to_string(dev.sm_minor);
      }
      t.devices.push_back(dev);
    }
    cudacore::ContextInfo ctx;
    ctx.context_id = c.context;
    ctx.device_index = it->second;
    t.contexts.push_back(ctx);
  }
  return t;
}

// On the trigger thread: every live range into MLFX_CUPTI_OUTPUT.
void copy_out(const std::string& output_template) {
  t_ours = true;
  g_recorder->trigger("fifo");
  const std::string output =
      expand_path(output_template, ::getpid(), static_cast<int64_t>(::time(nullptr)));
  CopyOutReport report;
  std::string error;
  const int fd = open_output(output, &error);
  if (fd < 0) {
    report.error = error;
    g_recorder->copy_out(output, report);
    return;
  }
  std::string sink_error;
  const cudacore::Sink sink = [fd, &sink_error](const void* data, size_t len) {
    auto* p = static_cast<const char*>(data);
    while (len > 0) {
      const ssize_t n = ::write(fd, p, len);  // EPIPE, not SIGPIPE: this thread blocks signals
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        sink_error = std::string("write: ") + std::strerror(errno);
        return false;
      }
      p += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  };
  const auto contexts = g_recorder->table().contexts();
  auto ranges = g_recorder->table().ranges();
  for (auto& range : ranges) {  // VMM maps made with no context current: read in one of its device
    if (range.context != 0) continue;
    uint64_t same_device = 0, any = 0;
    for (const auto& c : contexts) {
      if (!same_device && c.device == range.device) same_device = c.context;
      if (!any) any = c.context;
    }
    range.context = same_device ? same_device : any;
  }
  DriverReader reader;
  report = write_dump(ranges, dump_tables(contexts), reader, sink);
  if (!report.written && !sink_error.empty()) report.error = output + ": " + sink_error;
  ::close(fd);
  g_recorder->copy_out(output, report);
}

void* load_cupti(std::string* error) {
  std::vector<std::string> candidates;
  if (const char* v = std::getenv("MLFX_CUPTI_LIBCUPTI"); v && *v) candidates.push_back(v);
  candidates.push_back("libcupti.so");
#ifdef MLFX_CUPTI_BUILD_LIBCUPTI
  candidates.push_back(MLFX_CUPTI_BUILD_LIBCUPTI);
#endif
  for (const auto& path : candidates) {
    if (void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    const char* e = ::dlerror();
    *error += (error->empty() ? "" : "; ") + std::string(e ? e : path);
  }
  return nullptr;
}

void resolve_driver() {
  void* cuda = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);  // only if the process has it
  resolve(cuda, "cuCtxSetCurrent", &g_driver.ctx_set_current);
  resolve(cuda, "cuMemcpyDtoH_v2", &g_driver.memcpy_dtoh);
  resolve(cuda, "cuMemHostAlloc", &g_driver.host_alloc);
  resolve(cuda, "cuMemFreeHost", &g_driver.free_host);
  resolve(cuda, "cuDeviceGet", &g_driver.device_get);
  resolve(cuda, "cuDeviceGetName", &g_driver.device_name);
  resolve(cuda, "cuDeviceGetAttribute", &g_driver.device_attribute);
  resolve(cuda, "cuDriverGetVersion", &g_driver.driver_version);
  Dl_info info{};
  if (g_driver.ctx_set_current &&
      ::dladdr(reinterpret_cast<void*>(g_driver.ctx_set_current), &info))
    g_skip_bases[2] = info.dli_fbase;
}

// Subscribes to what the table needs; false with *error when CUPTI refuses.
bool subscribe(std::string* error) {
  CUpti_SubscriberHandle subscriber = nullptr;
  CUptiResult rc =
      g_cupti.subscribe(&subscriber, reinterpret_cast<CUpti_CallbackFunc>(on_callback), nullptr);
  if (rc != CUPTI_SUCCESS) {
    *error = "cuptiSubscribe: " + cupti_error(rc) + " (another CUPTI tool, or no driver?)";
    return false;
  }
  const char* errors = std::getenv("MLFX_CUPTI_ERRORS");
  if (!errors || std::strcmp(errors, "0") != 0) {
    // Every driver call's result, for the error events; allocations come through the same.
    rc = g_cupti.enable_domain(1, subscriber, CUPTI_CB_DOMAIN_DRIVER_API);
    if (rc != CUPTI_SUCCESS) {
      *error = "cuptiEnableDomain(driver API): " + cupti_error(rc);
      return false;
    }
  } else {
    for (size_t i = 0; i < kMemoryCallbackCount; ++i) {
      const CUpti_CallbackId id = kMemoryCallbacks[i];
      rc = g_cupti.enable_callback(1, subscriber, CUPTI_CB_DOMAIN_DRIVER_API, id);
      if (rc != CUPTI_SUCCESS) {
        *error = "cuptiEnableCallback(" + std::to_string(id) + "): " + cupti_error(rc);
        return false;
      }
    }
  }
  for (CUpti_CallbackId id :
       {CUPTI_CBID_RESOURCE_CONTEXT_CREATED, CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING}) {
    rc = g_cupti.enable_callback(1, subscriber, CUPTI_CB_DOMAIN_RESOURCE, id);
    if (rc != CUPTI_SUCCESS) {
      *error = "cuptiEnableCallback(resource " + std::to_string(id) + "): " + cupti_error(rc);
      return false;
    }
  }
  return true;
}

void start_trigger() {
  const char* trigger = std::getenv("MLFX_CUPTI_TRIGGER");
  const char* output = std::getenv("MLFX_CUPTI_OUTPUT");
  if (!trigger || !*trigger) return;  // no copy-out asked for
  if (!output || !*output) {
    g_recorder->notice("no-copy-out", "MLFX_CUPTI_TRIGGER is set but MLFX_CUPTI_OUTPUT is not");
    return;
  }
  const std::string fifo = expand_path(trigger, ::getpid(), static_cast<int64_t>(::time(nullptr)));
  std::string error;
  const int fd = open_trigger_fifo(fifo, &error);
  if (fd < 0) {
    g_recorder->notice("no-copy-out", error);
    return;
  }
  std::string output_template = output;
  if (!start_trigger_thread(
          fd,
          [output_template] {
            try {
              copy_out(output_template);
            } catch (...) {  // (bad_alloc) the copy-out is lost, the process goes on
            }
          },
          &error)) {
    g_recorder->notice("no-copy-out", error);
    ::close(fd);
    return;
  }
  g_recorder->notice("trigger", "copy-out armed: write a byte to " + fifo);
}

std::string settings_json(const RecorderConfig& config) {
  JsonLine j;
  j.str("log", config.log_path)
      .unum("max_entries", config.max_entries)
      .str("anomaly_socket", config.anomaly_socket);
  const char* trigger = std::getenv("MLFX_CUPTI_TRIGGER");
  const char* output = std::getenv("MLFX_CUPTI_OUTPUT");
  j.str("trigger", trigger ? trigger : "").str("output", output ? output : "");
  j.boolean("call_sites", g_call_sites);
  return j.done(false);
}

void initialize() {
  const RecorderConfig config = config_from_env();
  const char* sites = std::getenv("MLFX_CUPTI_CALL_SITES");
  g_call_sites = !sites || std::strcmp(sites, "0") != 0;
  g_recorder = new Recorder(config);
  if (!g_recorder->log_error().empty())
    std::fprintf(stderr, "mlfx-cupti: no event log: %s\n", g_recorder->log_error().c_str());
  g_recorder->start(settings_json(config));
  if (g_call_sites) {
    void* warm[1];
    ::backtrace(warm, 1);  // the first call loads libgcc_s: here, not inside a driver callback
  }
  Dl_info self{};
  if (::dladdr(reinterpret_cast<void*>(&initialize), &self)) g_skip_bases[0] = self.dli_fbase;

  std::string error;
  void* lib = load_cupti(&error);
  if (!lib) {
    g_recorder->notice("no-cupti", "could not load libcupti (set MLFX_CUPTI_LIBCUPTI): " + error);
    std::fprintf(stderr, "mlfx-cupti: not recording: could not load libcupti: %s\n", error.c_str());
    return;
  }
  resolve(lib, "cuptiSubscribe", &g_cupti.subscribe);
  resolve(lib, "cuptiEnableCallback", &g_cupti.enable_callback);
  resolve(lib, "cuptiEnableDomain", &g_cupti.enable_domain);
  resolve(lib, "cuptiGetResultString", &g_cupti.result_string);
  resolve(lib, "cuptiGetDeviceId", &g_cupti.device_id);
  if (!g_cupti.subscribe || !g_cupti.enable_callback || !g_cupti.enable_domain) {
    g_recorder->notice("no-cupti",
                       "libcupti lacks cuptiSubscribe/cuptiEnableCallback/cuptiEnableDomain");
    return;
  }
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(g_cupti.subscribe), &info)) g_skip_bases[1] = info.dli_fbase;
  resolve_driver();
  if (!subscribe(&error)) {
    g_recorder->notice("no-subscription", error);
    std::fprintf(stderr, "mlfx-cupti: not recording: %s\n", error.c_str());
    return;
  }
  g_recorder->notice("subscribed", "driver API and context callbacks");
  start_trigger();
}

}  // namespace
}  // namespace mlfx::cupti

// Called by the driver at cuInit (CUDA_INJECTION64_PATH). 1: the injection is fine; the
// library never makes the driver refuse the process, whatever went wrong here (it says so in
// its log instead).
extern "C" __attribute__((visibility("default"))) int InitializeInjection(void) {
  static std::atomic<bool> done{false};
  if (done.exchange(true)) return 1;
  try {
    mlfx::cupti::initialize();
  } catch (...) {
  }
  return 1;
}
