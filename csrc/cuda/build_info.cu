// The CUDA release this library was compiled with, as a marker string that
// irda_ext/_cuda_check.py finds in the shared library's bytes without loading
// it (a library built for another CUDA major version may not load at all).
#define IRDA_STR2(x) #x
#define IRDA_STR(x) IRDA_STR2(x)

extern "C" __attribute__((used, visibility("default"))) const char irda_ext_build_cuda_version[] =
    "irda_ext_build_cuda_version=" IRDA_STR(__CUDACC_VER_MAJOR__) "." IRDA_STR(__CUDACC_VER_MINOR__) ";";
