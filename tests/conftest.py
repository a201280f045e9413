"""Report which rbe the tests import (the installed wheel in CI) and what its kernels run on."""
import os

import rbe


def pytest_report_header(config):
    info = rbe.kernel_info()
    return (f"rbe {rbe.__version__} from {os.path.dirname(rbe.__file__)}; simd={info['simd']} "
            f"(available {', '.join(info['simd_available'])}), approx={info['approx']}, "
            f"openmp={info['openmp']}, threads={info['threads']}")
