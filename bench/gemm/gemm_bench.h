// weft's GEMM beside cuBLASLt on this process's GPU: `weft bench gemm [options]` and the
// stand-alone weft_gemm_bench both run this. argv[0] is a program name; the options are listed at
// the top of gemm_bench.cu. Returns the process exit status (0 when every check passed).
#pragma once

namespace weft::bench {

int run_gemm_bench(int argc, char** argv);

}  // namespace weft::bench
