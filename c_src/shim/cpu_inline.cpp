// CPU work run on the worker's own thread.
//
// MLX runs a CPU stream's tasks on a thread of its own (scheduler.cpp's
// StreamThread): an eval from a worker queues the tasks there and sleeps
// until that thread has run them. For small work the two thread wake-ups
// are most of the time: one add on f32[4] and its eval take about 19 us on
// the 2-core VM, of which the add itself is well under 1 us.
//
// Here, on a CPU queue (emlx_stream_new), once eval has queued its tasks,
// the worker runs them itself and then finds its results ready. The
// stream's own thread keeps running tasks that the worker does not wait
// for (an async_eval, MLX's internal evals): it sits in one long task of
// ours (park) that takes the queue's tasks as MLX's loop would. One lock
// (exec) is held by whichever thread runs a task, from taking it off the
// queue to its end, so tasks still run one at a time and in order. While
// the worker drains (helping) the stream thread takes none.
//
// MLX keeps StreamThread in scheduler.cpp; its first members are mirrored
// below (checked against the 0.32 wheels' Scheduler::enqueue: the mutex at
// 0, the deque at 40, the condition variable at 120, `stop` at 168; MLX
// is pinned at 0.32.4). Once a stream is set up, a check that one queued
// task shows up in the mirror turns the feature off for that stream when
// it fails. EMLX_CPU_INLINE=0 turns it off.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <queue>

#include "emlx_kernels.hpp"
#include "mlx/scheduler.h"

namespace emlx {
namespace {

// Scheduler::get_thread is private: its address is taken through an
// explicit instantiation, where C++ does not check access ([temp.spec]).
using GetThread = mx::scheduler::StreamThread &(mx::scheduler::Scheduler::*)(mx::Stream);
GetThread get_thread_member();
template <GetThread M>
struct Expose {
  friend GetThread get_thread_member() { return M; }
};
template struct Expose<&mx::scheduler::Scheduler::get_thread>;

// The same for the scheduler's mutex and the condition variable it
// notifies as tasks are counted in and out (n_active_tasks).
using SchedMutex = std::mutex mx::scheduler::Scheduler::*;
using SchedCv = std::condition_variable mx::scheduler::Scheduler::*;
SchedMutex sched_mutex_member();
SchedCv sched_cv_member();
template <SchedMutex M, SchedCv C>
struct ExposeSched {
  friend SchedMutex sched_mutex_member() { return M; }
  friend SchedCv sched_cv_member() { return C; }
};
template struct ExposeSched<&mx::scheduler::Scheduler::mtx, &mx::scheduler::Scheduler::completion_cv>;

// MLX's eval waits for the stream threads (scheduler::wait_for_one) once
// more than this many groups of 10 tasks are counted in (transforms.cpp).
constexpr int kMaxActive = 10;

struct StreamThreadPrefix {
  std::mutex mtx;
  std::queue<std::function<void()>> q;
  std::condition_variable cond;
  bool stop;
};

// What the stream thread listens to (see park).
enum Mode { kQuiet, kWatch, kServe };

struct Inline {
  StreamThreadPrefix *t = nullptr;
  std::mutex exec;            // held while a task runs, by either thread
  bool helping = false;       // the worker drains the queue (under t->mtx)
  std::atomic<int> mode{kQuiet};
  std::atomic<bool> quit{false};
  std::atomic<uint64_t> evals{0};  // the worker's evals so far
  mx::scheduler::Scheduler &sched = mx::scheduler::scheduler();
  std::mutex &sm = sched.*sched_mutex_member();
  std::condition_variable &scv = sched.*sched_cv_member();
  std::mutex qm;  // the quiet wait's own
  std::condition_variable qcv;
  bool kick = false;  // (under qm)
  std::promise<void> parked, left;

  bool ending() const { return quit || t->stop; }

  // Takes the next task off the queue and runs it, holding exec from one to
  // the other; the stream thread takes none while the worker drains. False
  // when none was run.
  bool run_next(bool worker) {
    std::lock_guard<std::mutex> ex(exec);
    std::function<void()> task;
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      if ((helping && !worker) || t->q.empty()) return false;
      task = std::move(t->q.front());
      t->q.pop();
    }
    task();  // (wrapped by MLX's enqueue: an error goes to the stream)
    return true;
  }

  // The stream thread, inside our task, in one of three modes.
  //  - Serve (async evals): it waits on MLX's condition variable and runs
  //    what is queued, as MLX's own loop does.
  //  - Watch (big evals): it waits on the scheduler's condition variable,
  //    notified every 10 tasks, and runs the queue once MLX's eval would
  //    wait for it (more than kMaxActive groups of tasks counted in).
  //  - Quiet (small evals): it waits on its own, so that queuing a task
  //    wakes nobody.
  // In every mode it also looks at the queue now and then, in case a wait
  // of MLX's own on this stream needs it.
  void park() {
    parked.set_value();
    auto idle = std::chrono::milliseconds(2);
    uint64_t seen = 0;
    while (!ending()) {
      int m = mode;
      bool worked = false;
      if (m == kServe) {
        {
          std::unique_lock<std::mutex> lk(t->mtx);
          // (MLX's stop, t->stop: its thread must get back to its own loop to end)
          t->cond.wait(lk, [&] { return ending() || mode != kServe || (!t->q.empty() && !helping); });
        }
        run_next(false);
        continue;
      }
      if (m == kWatch) {
        int active;
        {
          std::unique_lock<std::mutex> lk(sm);
          scv.wait_for(lk, idle, [&] { return ending() || mode != kWatch || sched.n_active_tasks() > kMaxActive; });
          active = sched.n_active_tasks();
        }
        while (run_next(false)) worked = true;
        if (!worked && active > kMaxActive) {
          // (another stream's backlog, or the worker drains: wait for a change)
          std::unique_lock<std::mutex> lk(sm);
          scv.wait_for(lk, idle, [&] { return ending() || mode != kWatch || sched.n_active_tasks() < active; });
        }
      } else {
        {
          std::unique_lock<std::mutex> lk(qm);
          qcv.wait_for(lk, idle, [&] { return kick || ending() || mode != kQuiet; });
          kick = false;
        }
        while (run_next(false)) worked = true;
      }
      // Every 2 ms while the worker evaluates (a small eval that still queues
      // enough tasks for MLX's wait gets through in that time), less often
      // once it has been idle.
      uint64_t now = evals;
      idle = worked || now != seen ? std::chrono::milliseconds(2) : std::min(idle * 2, std::chrono::milliseconds(16));
      seen = now;
    }
    left.set_value();
  }

  // The worker changes the mode; the stream thread is woken where it waits
  // only when it must listen to more than before (a wait that listens to
  // more notices the change at its next wake).
  void set_mode(int m) {
    int old = mode.exchange(m);
    if (old == m) return;
    if (old == kQuiet) {
      std::lock_guard<std::mutex> lk(qm);
      kick = true;
      qcv.notify_one();
    } else if (old == kWatch && m == kServe) {
      std::lock_guard<std::mutex> lk(sm);
      scv.notify_all();
    }
  }

  // The worker runs every queued task (any the stream thread is running
  // ends first). Whatever way it ends (MLX's tasks catch std::exception
  // themselves, not everything), the queue is the stream thread's again.
  void drain() {
    struct Helping {
      Inline &in;
      explicit Helping(Inline &i) : in(i) {
        std::lock_guard<std::mutex> lk(in.t->mtx);
        in.helping = true;
      }
      ~Helping() {
        bool more;
        {
          std::lock_guard<std::mutex> lk(in.t->mtx);
          in.helping = false;
          more = !in.t->q.empty();
        }
        if (more) in.t->cond.notify_all();
      }
    } helping_now(*this);
    while (run_next(true)) {
    }
  }

  void stop() {
    quit = true;
    {
      std::lock_guard<std::mutex> lk(t->mtx);
    }
    t->cond.notify_all();
    {
      std::lock_guard<std::mutex> lk(sm);
    }
    scv.notify_all();
    {
      std::lock_guard<std::mutex> lk(qm);
      kick = true;
    }
    qcv.notify_one();
    left.get_future().wait();
  }
};

thread_local Inline *here = nullptr;  // the worker thread's CPU stream, when set up
thread_local int64_t work = 0;        // instructions posted since the last eval here
thread_local int smalls = 0;          // small evals in a row

// Evals of at most kSmall instructions queue too few tasks for MLX's wait
// on the stream thread; kQuietAfter of them in a row make it quiet.
constexpr int64_t kSmall = 4;
constexpr int kQuietAfter = 8;

bool enabled() {
  const char *v = std::getenv("EMLX_CPU_INLINE");
  return !(v && v[0] == '0');
}

// One task queued by MLX must show up in the mirrored queue and be taken
// from it and run.
bool layout_holds(Inline &in, mx::Stream s) {
  {
    std::lock_guard<std::mutex> lk(in.t->mtx);
    if (in.t->stop || !in.t->q.empty()) return false;
    in.helping = true;  // (the stream thread leaves the queue alone)
  }
  bool ran = false;
  mx::scheduler::enqueue(s, [&ran] { ran = true; });
  size_t n;
  {
    std::lock_guard<std::mutex> lk(in.t->mtx);
    n = in.t->q.size();
  }
  in.drain();  // (and helping is off again)
  return n == 1 && ran;
}

}  // namespace

void *cpu_inline_start(mx::Stream s) {
  if (s.device != mx::Device::cpu || here || !enabled()) return nullptr;
  auto *in = new Inline();
  auto &st = (mx::scheduler::scheduler().*get_thread_member())(s);
  in->t = reinterpret_cast<StreamThreadPrefix *>(&st);
  auto parked = in->parked.get_future();
  mx::scheduler::enqueue(s, [in] { in->park(); });
  // (the stream thread takes it at once; should it not, leave it be)
  if (parked.wait_for(std::chrono::seconds(10)) != std::future_status::ready) return nullptr;
  if (!layout_holds(*in, s)) {
    in->stop();
    delete in;
    return nullptr;
  }
  here = in;
  return in;
}

void cpu_inline_stop(void *h) {
  auto *in = static_cast<Inline *>(h);
  if (!in) return;
  if (here == in) here = nullptr;
  in->stop();
  delete in;
}

void note_work(int64_t n) { work += n; }

namespace {

// MLX's eval makes one Synchronizer primitive over all its outputs, on the
// stream of the first one not yet scheduled (else the default stream: the
// GPU's on a CUDA build), and a GPU primitive refuses float64 inputs
// ("float64 is not supported on the GPU"). A loop's first state read, or an
// EMLX.eval, over a float64 array and a GPU one raised so. Float64 arrays,
// computed on the CPU stream, are evaluated apart: those not yet scheduled
// by an eval of their own (its synchronizer on their CPU stream), those
// already scheduled by waiting for them. The rest stay in outs.
void float64_apart(std::vector<mx::array> &outs, bool async) {
  if (mx::default_device() != mx::Device::gpu) return;
  std::vector<mx::array> unscheduled, scheduled, rest;
  for (auto &a : outs) {
    if (a.dtype() != mx::float64)
      rest.push_back(a);
    else if (a.status() == mx::array::Status::unscheduled)
      unscheduled.push_back(a);
    else if (!async)
      scheduled.push_back(a);
  }
  if (rest.size() == outs.size()) return;
  if (!unscheduled.empty()) async ? mx::async_eval(unscheduled) : mx::eval(unscheduled);
  for (auto &a : scheduled) a.wait();
  outs = std::move(rest);
}

}  // namespace

void eval_here(std::vector<mx::array> outs) {
  float64_apart(outs, false);
  if (outs.empty()) return;
  if (!here) return gpu_wait_spins() ? gpu_wait_eval(std::move(outs)) : mx::eval(std::move(outs));
  // Big evals make the stream thread watch for MLX's wait on it; a run of
  // small ones makes it quiet. Either way the worker then runs what is
  // still queued, instead of sleeping until it is run.
  if (work > kSmall) {
    if (here->mode != kServe) here->set_mode(kWatch);
    smalls = 0;
  } else if (++smalls >= kQuietAfter) {
    here->set_mode(kQuiet);
  }
  work = 0;
  here->evals++;
  mx::async_eval(outs);
  here->drain();
  mx::eval(std::move(outs));  // waits (the work is done) and raises its errors
}

void async_eval_here(std::vector<mx::array> outs) {
  float64_apart(outs, true);
  if (outs.empty()) return;
  work = 0;
  smalls = 0;
  if (here) here->set_mode(kServe);
  mx::async_eval(std::move(outs));
}

void synchronize_here(mx::Stream s) {
  if (!here || s.device != mx::Device::cpu) return mx::synchronize(s);
  here->drain();  // (a stream made on this thread: this one)
  mx::scheduler::scheduler().check_error(s);
}

}  // namespace emlx
