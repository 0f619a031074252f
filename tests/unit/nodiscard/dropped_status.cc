// Must not compile: a dropped Status (tests/unit/nodiscard/check.cmake).
#include "mlfx/base/result.h"

mlfx::Status might_fail() { return mlfx::fail(mlfx::Errc::kIo, "disk gone"); }
mlfx::Result<int> might_fail_too() { return 1; }

int main() {
#ifdef DROP_STATUS
  might_fail();
#endif
#ifdef DROP_RESULT
  might_fail_too();
#endif
  (void)might_fail();  // an explicit discard is allowed
  return 0;
}
