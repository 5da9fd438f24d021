"""Build step of the ulpt package (the metadata is in pyproject.toml).

Records, in the installed package, where the libulpt build tree it was installed from
is (ulpt/_build_tree.py), so that a package installed from a checkout into a virtual
environment finds that checkout's lib/libulpt.so.1 when no installed copy is found
first.  Nothing is recorded when the sources are not in a checkout."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        top = os.path.normpath(os.path.join(here, "..", ".."))
        lib = os.path.join(top, "lib", "libulpt.so.1")
        value = lib if os.path.exists(os.path.join(top, "include", "ulpt.h")) else None
        target = os.path.join(self.build_lib, "ulpt", "_build_tree.py")
        with open(target, "w") as f:
            f.write('"""Written at install time by setup.py: the libulpt build tree the '
                    'package came from."""\nLIBRARY = %r\n' % (value,))


setup(cmdclass={"build_py": BuildPy})
