"""Report which rbe the tests import (the installed wheel in CI) and what its kernels run on."""
import os

import rbe


def pytest_report_header(config):
    info = rbe.kernel_info()
    return (f"rbe {rbe.__version__} from {os.path.dirname(rbe.__file__)}; simd={info['simd']} "
            f"(available {', '.join(info['simd_available'])}), approx={info['approx']}, "
            f"openmp={info['openmp']}, threads={info['threads']}")


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def python_in_child(tmp_path_factory):
    """Run ``python -c code *args`` (or ``python -m ...`` with module=) in a child process that
    imports the rbe under test (installed wheel or in-place build), from a directory outside
    the source tree (cwd=, or a fresh one). Returns the CompletedProcess (text output)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rbe.__file__)))
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))

    def run(code=None, *args, module=None, env=None, timeout=120, cwd=None):
        command = ["-m", module] if module else ["-c", code]
        return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                              cwd=cwd or tmp_path_factory.mktemp("child"), timeout=timeout,
                              env=os.environ | (env or {}) | {"PYTHONPATH": path})
    return run


@pytest.fixture
def run_python(python_in_child, tmp_path):
    """python_in_child, run from the test's tmp_path."""
    return lambda *args, **kwargs: python_in_child(*args, cwd=tmp_path, **kwargs)


@pytest.fixture
def threads():
    """rbe.set_num_threads, with the thread count restored after the test (0, OpenMP's default,
    when none was set)."""
    before = rbe.get_num_threads() if rbe._core.num_threads_set() else 0
    yield rbe.set_num_threads
    rbe.set_num_threads(before)


@pytest.fixture
def concurrently():
    """Run fn(k) for k in range(n) on n Python threads at once; the results in order."""
    from concurrent.futures import ThreadPoolExecutor

    def run(fn, n):
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(fn, range(n)))
    return run
