// CPU work run on the worker's own thread.
//
// MLX runs a CPU stream's tasks on a thread of its own (scheduler.cpp's
// StreamThread): an eval from a worker queues the tasks there and sleeps
// until that thread has run them. For small work the two thread wake-ups
// are most of the time: one add on f32[4] and its eval take about 19 us on
// the 2-core VM, of which the add itself is well under 1 us.
//
// Here, once eval has queued its tasks, the worker runs them itself and
// then finds its results ready. The stream's own thread keeps running tasks
// that the worker does not wait for (an async_eval, MLX's internal evals):
// it sits in one long task of ours (park) that takes the queue's tasks as
// MLX's loop would. One lock (exec) is held by whichever thread runs a
// task, from taking it off the queue to its end, so tasks still run one at
// a time and in order. While the worker drains (helping) the stream thread
// takes none.
//
// MLX keeps StreamThread in scheduler.cpp; its first members are mirrored
// below (checked against the 0.32 wheels' Scheduler::enqueue: the mutex at
// 0, the deque at 40, the condition variable at 120, `stop` at 168), and
// the layout is checked once a stream is set up, before any use: a wrong
// one turns the feature off for that stream. EMLX_CPU_INLINE=0 turns it off.

#include <algorithm>
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

struct StreamThreadPrefix {
  std::mutex mtx;
  std::queue<std::function<void()>> q;
  std::condition_variable cond;
  bool stop;
};

struct Inline {
  StreamThreadPrefix *t = nullptr;
  std::mutex exec;       // held while a task runs, by either thread
  bool helping = false;  // the worker drains the queue      } under
  bool serve = false;    // the stream thread runs the queue  } t->mtx
  bool quit = false;     // park returns                      }
  std::mutex pm;         // the quiet stream thread's own wait
  std::condition_variable pcv;
  bool kick = false;
  std::promise<void> parked, left;

  // Runs the next task unless the worker drains; false when none was run.
  bool run_one() {
    std::lock_guard<std::mutex> ex(exec);
    std::function<void()> task;
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      if (helping || t->q.empty()) return false;
      task = std::move(t->q.front());
      t->q.pop();
    }
    task();  // (wrapped by MLX's enqueue: an error goes to the stream)
    return true;
  }

  // The stream thread, inside our task. Serving, it waits on MLX's
  // condition variable and runs what is queued, as MLX's loop does. Quiet,
  // it waits on its own (so that MLX's enqueues wake nobody) and looks at
  // the queue when kicked, or now and then in case a wait of MLX's own on
  // this thread's stream needs it.
  void park() {
    parked.set_value();
    auto idle = std::chrono::milliseconds(2);
    for (;;) {
      bool serving;
      {
        std::unique_lock<std::mutex> lk(t->mtx);
        if (quit || t->stop) break;
        serving = serve;
        if (serving) {
          // (MLX's stop, at exit: its thread must get back to its own loop to end)
          t->cond.wait(lk, [&] { return quit || t->stop || !serve || (!t->q.empty() && !helping); });
          if (quit || t->stop) break;
          if (!serve) continue;
        }
      }
      if (serving) {
        run_one();
        continue;
      }
      {
        std::unique_lock<std::mutex> lk(pm);
        pcv.wait_for(lk, idle, [&] { return kick; });
        kick = false;
      }
      bool worked = false;
      while (run_one()) worked = true;
      idle = worked ? std::chrono::milliseconds(2) : std::min(idle * 2, std::chrono::milliseconds(16));
    }
    left.set_value();
  }

  void set_serve(bool on) {
    bool was;
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      was = serve;
      serve = on;
    }
    if (on && !was) {
      std::lock_guard<std::mutex> lk(pm);
      kick = true;
      pcv.notify_one();
    }
  }

  // The worker runs every queued task (any the stream thread is running
  // ends first).
  void drain() {
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      helping = true;
    }
    for (;;) {
      std::lock_guard<std::mutex> ex(exec);
      std::function<void()> task;
      {
        std::lock_guard<std::mutex> lk(t->mtx);
        if (t->q.empty()) break;
        task = std::move(t->q.front());
        t->q.pop();
      }
      task();
    }
    bool more;
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      helping = false;
      more = serve && !t->q.empty();
    }
    if (more) t->cond.notify_all();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(t->mtx);
      quit = true;
    }
    t->cond.notify_all();
    {
      std::lock_guard<std::mutex> lk(pm);
      kick = true;
      pcv.notify_one();
    }
    left.get_future().wait();
  }
};

thread_local Inline *here = nullptr;  // the worker thread's CPU stream, when set up
thread_local int64_t work = 0;        // instructions posted since the last eval here
thread_local int smalls = 0;          // small evals in a row

// MLX makes an eval wait (scheduler::wait_for_one) once more than 10 groups
// of 10 tasks are pending: an eval that big keeps the stream thread serving.
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
  }
  bool ran = false;
  mx::scheduler::enqueue(s, [&ran] { ran = true; });
  size_t n;
  {
    std::lock_guard<std::mutex> lk(in.t->mtx);
    n = in.t->q.size();
  }
  if (n != 1) return false;
  in.drain();
  return ran;
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

void eval_here(std::vector<mx::array> outs) {
  if (!here) return mx::eval(std::move(outs));
  // The stream thread serves through big evals (and async ones), and goes
  // quiet after a run of small ones. Either way the worker then runs what
  // is still queued, instead of sleeping until it is run.
  if (work > kSmall) {
    here->set_serve(true);
    smalls = 0;
  } else if (++smalls >= kQuietAfter) {
    here->set_serve(false);
  }
  work = 0;
  mx::async_eval(outs);
  here->drain();
  mx::eval(std::move(outs));  // waits (the work is done) and raises its errors
}

void async_eval_here(std::vector<mx::array> outs) {
  work = 0;
  smalls = 0;
  if (here) here->set_serve(true);
  mx::async_eval(std::move(outs));
}

void synchronize_here(mx::Stream s) {
  if (!here || s.device != mx::Device::cpu) return mx::synchronize(s);
  here->drain();  // (a stream made on this thread: this one)
  mx::scheduler::scheduler().check_error(s);
}

}  // namespace emlx
