"""When a binary re-executes itself with glibc's huge-page tunable (launch/huge_pages.py)."""
import pytest

from launch import huge_pages


@pytest.fixture
def mode_file(tmp_path):
  def write(text):
    path = tmp_path / 'enabled'
    path.write_text(text)
    return str(path)
  return write


def test_adds_the_tunable_where_the_kernel_gives_huge_pages_on_request(mode_file):
  env = huge_pages.environment_with_huge_pages({'PATH': '/bin'}, mode_file('always [madvise] never\n'))
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}


def test_keeps_other_tunables(mode_file):
  env = huge_pages.environment_with_huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'},
                                               mode_file('always [madvise] never\n'))
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ, modes', [
    ({}, '[always] madvise never'),  # Every mapping gets huge pages already.
    ({}, 'always madvise [never]'),  # The kernel gives none.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'always [madvise] never'),  # The user chose.
    ({'LAUNCH_HUGE_PAGES': '0'}, 'always [madvise] never'),  # Turned off.
])
def test_runs_as_started(mode_file, environ, modes):
  assert huge_pages.environment_with_huge_pages(environ, mode_file(modes)) is None


def test_runs_as_started_without_the_kernel_setting(tmp_path):
  assert huge_pages.environment_with_huge_pages({}, str(tmp_path / 'missing')) is None


@pytest.mark.parametrize('argv, module', [
    (['python', '-m', 'launch.fuse', '--ir_dir=x'], 'launch.fuse'),
    (['python', '-u', '-X', 'dev', '-m', 'launch.train'], 'launch.train'),
    (['python', 'benchmarks/cfi_speed.py', '-m', 'launch.x'], None),
    (['python', '-c', 'import launch'], None),
    (['pytest', 'tests'], None),
])
def test_launched_module(argv, module):
  assert huge_pages.launched_module(argv) == module
