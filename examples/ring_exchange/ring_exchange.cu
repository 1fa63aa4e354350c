// The smallest complete weft program (the README's example): every rank writes a block of floats
// into the next rank's symmetric buffer and raises the next rank's signal; every rank waits for its
// own signal, then checks what the previous rank sent. Runs several rounds on the same signal with
// growing epochs (signals are never reset).
//
//   build/tools/weft/weft run -n 4 -- build/examples/ring_exchange/weft_ring_exchange
#include <cstdio>
#include <vector>

#include "weft/device/weft.cuh"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/world.h"

namespace dev = weft::dev;

__global__ void ring_put(const __grid_constant__ dev::Context ctx, float* inbox, const float* src,
                         size_t n, weft::signal_t* ready, uint64_t epoch) {
  const int next = (dev::rank(ctx) + 1) % dev::world_size(ctx);
  // Write my block into the next rank's inbox, then raise its flag (release, system scope).
  dev::putmem_signal_nbi(dev::Block{}, ctx, inbox, src, n * sizeof(float), ready, epoch,
                         dev::SignalOp::set, next);
  // Wait for the previous rank's block (acquire; traps with a report instead of hanging).
  dev::wait(dev::Block{}, ctx, ready, dev::Cmp::ge, epoch);
}

__global__ void fill(float* x, size_t n, int rank, uint64_t epoch) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    x[i] = float(rank * 1000003 + epoch * 7919 + i % 65521);
}

int main() {
  try {
    auto world = weft::World::create();  // from weft run / torchrun / mpirun / srun
    const size_t n = size_t(1) << 20;
    auto inbox = world->alloc<float>(n);  // symmetric: same call on every rank
    auto src = world->alloc<float>(n);
    auto ready = world->alloc_signals(1);  // zeroed 64-bit epochs
    const int prev = (world->rank() + world->size() - 1) % world->size();
    std::vector<float> got(n);
    int wrong = 0;
    for (uint64_t epoch = 1; epoch <= 3; ++epoch) {
      fill<<<132, 256, 0, world->stream()>>>(src.data(), n, world->rank(), epoch);
      WEFT_CHECK_LAUNCH();
      world->barrier(world->stream());  // every inbox was read in the previous round
      ring_put<<<1, 1024, 0, world->stream()>>>(world->context(), inbox.data(), src.data(), n,
                                                ready.data(), epoch);
      WEFT_CHECK_LAUNCH();
      WEFT_CUDA_CHECK(cudaMemcpyAsync(got.data(), inbox.data(), n * sizeof(float),
                                      cudaMemcpyDeviceToHost, world->stream()));
      world->synchronize(world->stream());
      for (size_t i = 0; i < n; ++i)
        wrong += got[i] != float(prev * 1000003 + epoch * 7919 + i % 65521);
    }
    world->barrier(world->stream());
    world->synchronize(world->stream());
    std::printf("rank %d of %d: %s\n", world->rank(), world->size(),
                wrong ? "WRONG DATA" : "received every block from the previous rank");
    return wrong ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
