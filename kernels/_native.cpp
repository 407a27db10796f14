// Native front of the row kernels' lean launches (aten::_softmax, aten::_log_softmax).
//
// Why: a kernel registered from Python with torch.library costs the dispatcher's trip into
// Python (~3 us on the H100 host) plus the Python frame's own work, which put log_softmax fp32 at
// 1.5x stock's host time (issue 10, item 1). Registered here, a call that matches a launch the
// Python path has already bound costs a table lookup, torch's own allocation and one
// cuLaunchKernel of the same compiled Triton kernel with the same arguments: the same bits.
// Anything else (a miss, a Triton launch hook installed, another current device, no CUDA context)
// redispatches to the Python kernel (the detllm_fallback ops), which binds the launch for next
// time. The parameter layout of each launch is worked out in Python (kernels/_native.py `plan`),
// from the compiled kernel's own signature, so nothing here knows Triton's ABI.
//
// Control plane: extern "C" functions called through ctypes (no pybind11: the build needs only
// torch's and Python's headers; kernels/_native.py builds and loads this file).

#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

namespace {

constexpr int32_t kAbi = 1;  // kernels/_native.py checks it: a stale build is rebuilt, not misread
constexpr int kMaxDim = 8;
constexpr int kMaxParams = 24;

enum Op : int32_t { SOFTMAX = 0, LOG_SOFTMAX = 1, N_OPS = 2 };
const char* const kOpNames[N_OPS] = {"_softmax", "_log_softmax"};

// What goes into a kernel parameter: the call's input or output pointer, or a value fixed when
// the launch was bound. ZERO_PTR: Triton's scratch pointers, null where the kernel needs none.
enum Kind : int32_t { IN_PTR = 0, OUT_PTR = 1, I32 = 2, I64 = 3, F32 = 4, ZERO_PTR = 5 };

// Everything the Python path's lean key holds (cuda.py `log_softmax`): the launch plan depends on
// shape, dtypes, the op's arguments, the device and the input pointer's 16-byte alignment (Triton
// specialises on it). Contiguity is required, not keyed. No padding: compared bytewise.
struct Key {
  int64_t sizes[kMaxDim];
  int64_t arg;  // softmax's dim, as the caller passed it
  int32_t op;
  int32_t device;
  int32_t ndim;
  int32_t dtype;  // c10::ScalarType
  int32_t flag;   // softmax's half_to_float
  int32_t align;  // input pointer % 16
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};
static_assert(sizeof(Key) == 8 * kMaxDim + 8 + 6 * 4, "Key must have no padding");

// The one place a Key is filled: by a call (softmax_like) and by the Python side's put.
Key make_key(int32_t op, int32_t dtype, int32_t flag, int64_t arg, int32_t ndim, const int64_t* sizes,
             int32_t align, int32_t device) {
  Key k{};
  for (int32_t i = 0; i < ndim; ++i) k.sizes[i] = sizes[i];
  k.arg = arg;
  k.op = op;
  k.device = device;
  k.ndim = ndim;
  k.dtype = dtype;
  k.flag = flag;
  k.align = align;
  return k;
}

struct KeyHash {
  size_t operator()(const Key& k) const noexcept {
    uint64_t w[sizeof(Key) / 8];
    std::memcpy(w, &k, sizeof(Key));
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (uint64_t x : w) h = (h ^ x) * 0x100000001B3ull + (h >> 29);
    return static_cast<size_t>(h);
  }
};

struct Entry {
  void* function;
  uint32_t grid[3];
  uint32_t block;   // threads: 32 * num_warps
  uint32_t shared;  // dynamic shared memory, bytes
  int32_t out_dtype;
  int32_t n;  // parameters
  int32_t kinds[kMaxParams];
  int64_t values[kMaxParams];
};

// cuLaunchKernel's and cuCtxGetCurrent's signatures (CUresult is an int enum; handles are
// pointers), so that no CUDA header is needed to build.
using LaunchFn = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                         void**, void**);
using CtxFn = int (*)(void**);
using ErrFn = int (*)(int, const char**);

struct State {
  std::shared_mutex mu;  // guards table
  std::unordered_map<Key, Entry, KeyHash> table;
  std::atomic<int64_t> calls[N_OPS] = {};
  std::mutex lib_mu;  // guards lib, fallback, key, dev_type
  std::unique_ptr<torch::Library> lib;
  std::optional<c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t, bool)>> fallback[N_OPS];
  c10::DispatchKey key = c10::DispatchKey::CUDA;
  c10::DeviceType dev_type = c10::DeviceType::CUDA;
  // Triton's launch hook chains' `calls` lists (knobs.runtime.launch_enter_hook / _exit_hook),
  // kept alive by kernels/_native.py: a hook added there must see every launch, so a non-empty
  // list sends calls to the Python path, which runs the hooks.
  PyObject* hook_lists[2] = {nullptr, nullptr};
  LaunchFn launch = nullptr;
  CtxFn ctx = nullptr;
  ErrFn err = nullptr;
  std::string error;
};

State& state() {
  static State* s = new State();  // never destroyed: kernels may run during interpreter teardown
  return *s;
}

bool hooks_clear(const State& s) {
  for (PyObject* l : s.hook_lists) {
    if (l != nullptr && PyList_GET_SIZE(l) != 0) return false;
  }
  return true;
}

// The stream and device checks a CUDA launch needs, or false (take the Python path). CPU: the
// fake launch of the tests (no stream).
bool launch_context(const State& s, const at::Tensor& self, void** stream) {
  if (s.dev_type != c10::DeviceType::CUDA) {
    *stream = nullptr;
    return true;
  }
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  const c10::Device dev = self.device();
  // Triton launches in the current context: a tensor on another card goes through the Python
  // path, which makes its device current first.
  if (impl->getDevice() != dev) return false;
  if (s.ctx != nullptr) {
    void* ctx = nullptr;
    if (s.ctx(&ctx) != 0 || ctx == nullptr) return false;  // a thread with no CUDA context yet
  }
  *stream = impl->getStreamNativeHandle(impl->getStream(dev));
  return true;
}

void run(const State& s, const Entry& e, void* in, void* out, void* stream) {
  int64_t store[kMaxParams];
  void* params[kMaxParams];
  for (int i = 0; i < e.n; ++i) {
    switch (e.kinds[i]) {
      case IN_PTR: store[i] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(in)); break;
      case OUT_PTR: store[i] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(out)); break;
      case I32: {
        const int32_t v = static_cast<int32_t>(e.values[i]);
        std::memcpy(&store[i], &v, sizeof v);
        break;
      }
      case F32: {
        const uint32_t v = static_cast<uint32_t>(e.values[i]);  // the float's bits
        std::memcpy(&store[i], &v, sizeof v);
        break;
      }
      case I64: store[i] = e.values[i]; break;
      default: store[i] = 0; break;  // ZERO_PTR
    }
    params[i] = &store[i];
  }
  const int rc = s.launch(e.function, e.grid[0], e.grid[1], e.grid[2], e.block, 1, 1, e.shared, stream, params,
                          nullptr);
  if (rc != 0) {
    const char* what = nullptr;
    if (s.err != nullptr) s.err(rc, &what);
    // One ready string, no stream insertion: a compiler that links libstdc++ statically into this
    // library (one GPU host's g++ wrapper did) would format with its own, uninitialised locale.
    const std::string msg = "detllm native launch: CUDA driver error " + std::to_string(rc) + " (" +
                            (what ? what : "unknown") + ")";
    TORCH_CHECK(false, msg);
  }
}

at::Tensor softmax_like(Op op, const at::Tensor& self, int64_t dim, bool half_to_float) {
  State& s = state();
  const int64_t nd = self.dim();
  if (s.launch != nullptr && nd >= 1 && nd <= kMaxDim && hooks_clear(s) && self.is_contiguous()) {
    void* in = self.data_ptr();
    const Key k = make_key(op, static_cast<int32_t>(self.scalar_type()), half_to_float ? 1 : 0, dim,
                           static_cast<int32_t>(nd), self.sizes().data(),
                           static_cast<int32_t>(reinterpret_cast<uintptr_t>(in) & 15), self.get_device());
    Entry e;
    bool hit = false;
    {
      std::shared_lock<std::shared_mutex> lock(s.mu);
      auto it = s.table.find(k);
      if (it != s.table.end()) {
        e = it->second;
        hit = true;
      }
    }
    void* stream = nullptr;
    if (hit && launch_context(s, self, &stream)) {
      at::Tensor y = at::empty(self.sizes(), self.options().dtype(static_cast<c10::ScalarType>(e.out_dtype)));
      run(s, e, in, y.data_ptr(), stream);
      s.calls[op].fetch_add(1, std::memory_order_relaxed);
      return y;
    }
  }
  // The Python kernel, straight at the backend key (the caller already went through autograd).
  return s.fallback[op]->redispatch(c10::DispatchKeySet(s.key), self, dim, half_to_float);
}

at::Tensor softmax_native(const at::Tensor& self, int64_t dim, bool half_to_float) {
  return softmax_like(SOFTMAX, self, dim, half_to_float);
}

at::Tensor log_softmax_native(const at::Tensor& self, int64_t dim, bool half_to_float) {
  return softmax_like(LOG_SOFTMAX, self, dim, half_to_float);
}

// torch warns when a kernel overrides a registered one: here that is the point, and a warning
// raised outside a Python call would go to stderr.
struct Silent : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

int fail(const std::string& what) {
  state().error = what;
  return -1;
}

}  // namespace

extern "C" {

int32_t detllm_native_abi() { return kAbi; }

const char* detllm_native_error() { return state().error.c_str(); }

// c10::ScalarType's number for a dtype name ("float32", "bfloat16", ...), or -1.
int32_t detllm_native_scalar_type(const char* name) {
  const std::string n(name);
  if (n == "float32") return static_cast<int32_t>(c10::ScalarType::Float);
  if (n == "float16") return static_cast<int32_t>(c10::ScalarType::Half);
  if (n == "bfloat16") return static_cast<int32_t>(c10::ScalarType::BFloat16);
  if (n == "float64") return static_cast<int32_t>(c10::ScalarType::Double);
  return -1;
}

// fn null: cuLaunchKernel from the loaded CUDA driver (0), or -1 where there is none. Tests on CPU
// pass a fake with cuLaunchKernel's signature.
int detllm_native_set_launch(void* fn) {
  State& s = state();
  if (fn != nullptr) {
    s.launch = reinterpret_cast<LaunchFn>(fn);
    s.ctx = nullptr;
    s.err = nullptr;
    return 0;
  }
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);  // torch has loaded it: never a new load
  if (h == nullptr) return fail("libcuda.so.1 is not loaded");
  s.launch = reinterpret_cast<LaunchFn>(dlsym(h, "cuLaunchKernel"));
  s.ctx = reinterpret_cast<CtxFn>(dlsym(h, "cuCtxGetCurrent"));
  s.err = reinterpret_cast<ErrFn>(dlsym(h, "cuGetErrorString"));
  if (s.launch == nullptr || s.ctx == nullptr) {
    s.launch = nullptr;
    return fail("libcuda.so.1 lacks cuLaunchKernel or cuCtxGetCurrent");
  }
  return 0;
}

// The two lists (borrowed: the caller keeps them alive while the front is on), or nulls.
void detllm_native_set_hooks(PyObject* enter, PyObject* leave) {
  State& s = state();
  s.hook_lists[0] = enter;
  s.hook_lists[1] = leave;
}

int detllm_native_put(int32_t op, int32_t dtype, int32_t flag, int64_t arg, int32_t ndim, const int64_t* sizes,
                      int32_t align, int32_t device, void* function, const uint32_t* grid, uint32_t block,
                      uint32_t shared, int32_t out_dtype, int32_t n, const int32_t* kinds, const int64_t* values) {
  if (op < 0 || op >= N_OPS || ndim < 1 || ndim > kMaxDim || n < 0 || n > kMaxParams || function == nullptr) {
    return fail("detllm_native_put: argument out of range");
  }
  const Key k = make_key(op, dtype, flag, arg, ndim, sizes, align, device);
  Entry e{};
  e.function = function;
  std::memcpy(e.grid, grid, sizeof e.grid);
  e.block = block;
  e.shared = shared;
  e.out_dtype = out_dtype;
  e.n = n;
  for (int i = 0; i < n; ++i) {
    if (kinds[i] < IN_PTR || kinds[i] > ZERO_PTR) return fail("detllm_native_put: unknown parameter kind");
    e.kinds[i] = kinds[i];
    e.values[i] = values[i];
  }
  State& s = state();
  std::unique_lock<std::shared_mutex> lock(s.mu);
  if (s.table.size() >= 4096) s.table.clear();  // prefill shapes vary: keep it bounded
  s.table[k] = e;
  return 0;
}

void detllm_native_clear() {
  State& s = state();
  std::unique_lock<std::shared_mutex> lock(s.mu);
  s.table.clear();
}

int64_t detllm_native_size() {
  State& s = state();
  std::shared_lock<std::shared_mutex> lock(s.mu);
  return static_cast<int64_t>(s.table.size());
}

int64_t detllm_native_calls(int32_t op) {
  return op >= 0 && op < N_OPS ? state().calls[op].load(std::memory_order_relaxed) : -1;
}

// Registers the front for `key` ("CUDA"; the tests use "CPU") over aten::_softmax and
// aten::_log_softmax; each falls back to detllm_fallback::<op> (defined by the caller first).
int detllm_native_enable(const char* key) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.lib_mu);
  if (s.lib) return fail("detllm native front: already enabled");
  try {
    const std::string k(key);
    c10::DispatchKey dk;
    if (k == "CUDA") {
      dk = c10::DispatchKey::CUDA;
      s.dev_type = c10::DeviceType::CUDA;
    } else if (k == "CPU") {
      dk = c10::DispatchKey::CPU;
      s.dev_type = c10::DeviceType::CPU;
    } else {
      return fail("detllm native front: unknown dispatch key " + k);
    }
    for (int op = 0; op < N_OPS; ++op) {
      s.fallback[op] = c10::Dispatcher::singleton()
                           .findSchemaOrThrow((std::string("detllm_fallback::") + kOpNames[op]).c_str(), "")
                           .typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
    }
    s.key = dk;
    Silent silent;
    c10::WarningUtils::WarningHandlerGuard guard(&silent);
    auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", dk, __FILE__, __LINE__);
    lib->impl("_softmax", TORCH_FN(softmax_native));
    lib->impl("_log_softmax", TORCH_FN(log_softmax_native));
    s.lib = std::move(lib);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}

// Deregisters the front (the previous kernels come back); the table is kept.
int detllm_native_disable() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.lib_mu);
  try {
    s.lib.reset();
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}

}  // extern "C"
