#include "bench/gemm/gemm_bench.h"

int main(int argc, char** argv) { return weft::bench::run_gemm_bench(argc, argv); }
