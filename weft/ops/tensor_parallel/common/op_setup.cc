#include "weft/ops/tensor_parallel/common/op_setup.h"

#include <cstdlib>
#include <vector>

#include "weft/gemm/gemm.h"
#include "weft/ops/tensor_parallel/common/tp_common.h"
#include "weft/runtime/cuda_check.h"
#include "weft/runtime/rendezvous.h"

namespace weft::tp {

void check_single_node(const World& world, const char* reach, const char* where) {
  WEFT_CHECK_ARG_AT(where, world.lsa_size() == world.size(),
                    "{}, so all {} ranks must be on one node; this node holds {}", reach,
                    world.size(), world.lsa_size());
  WEFT_CHECK_ARG_AT(where, world.size() <= kMaxWorld, "at most {} ranks, got {}", kMaxWorld,
                    world.size());
}

int choose_barrier_index(int requested, const dev::Context& ctx, const char* where) {
  WEFT_CHECK_ARG_AT(where, requested < ctx.barrier_count,
                    "barrier_index {} is outside the world's range [0, {})", requested,
                    ctx.barrier_count);
  return requested >= 0 ? requested : next_barrier_index(ctx.barrier_count);
}

void check_same_settings(World& world, const std::string& settings, const char* where) {
  const std::vector<std::string> all = world.rendezvous().all_gather(settings);
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += fmt::format("; rank {}: {}", r, all[r]);
  WEFT_CHECK_ARG_AT(where, differ.empty(),
                    "every rank must construct the operator with the same plan settings (options "
                    "and WEFT_* overrides), or their plans differ and they wait on each other: "
                    "rank 0: {}{}",
                    all[0], differ);
}

std::string env_setting(const char* var) {
  const char* v = std::getenv(var);
  return v ? fmt::format("'{}'", v) : std::string("<unset>");
}

std::unique_ptr<LtGemm> make_operator_lt_gemm(World& world) {
  return std::make_unique<LtGemm>(lt_algo_choice_from_env(),
                                  [w = &world](cudaStream_t s) { w->synchronize(s); });
}

bool check_operand_pointers(DevicePointerChecker& checker, cudaStream_t stream, const void* a,
                            const void* b, const void* out, const char* out_name,
                            const char* where) {
  const bool capturing = stream_capturing(stream, where);
  checker.check(a, "A", 16, where, capturing);
  checker.check(b, "B", 16, where, capturing);
  checker.check(out, out_name, 16, where, capturing);
  return capturing;
}

}  // namespace weft::tp
