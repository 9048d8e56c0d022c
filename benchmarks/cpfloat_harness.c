/* Thin ctypes entry points to CPFloat for benchmarks/bench_cpfloat.py (lowprec's own code).
 *
 * CPFloat (Fasi & Mikaitis, ACM TOMS 49(2), 2023; LGPL 2.1) is header-only: this file includes
 * its headers from ../shared/peers/cpfloat/src, which the benchmark passes with -I when it
 * compiles this file into a shared library at run time. Built without -fopenmp, CPFloat runs its
 * sequential loops (one thread) and draws stochastic-rounding bits from the C library's rand().
 *
 * Each function fills an optstruct with the target format (precision p counts the implicit bit,
 * so a format with m stored mantissa bits has p = m + 1; emin/emax are the exponents of the
 * smallest normal and of the largest binade) and rounds n values of x into y (preallocated).
 * It returns CPFloat's status code (0: the options were valid and used as given).
 */

#include <stddef.h>

#include "cpfloat_binary32.h"
#include "cpfloat_binary64.h"

static optstruct *harness_options(int precision, int emin, int emax, int subnormal,
                                  int infinity, int round, int saturation) {
  optstruct *o = init_optstruct();
  o->format[0] = '\0';
  o->precision = (cpfloat_precision_t)precision;
  o->emin = emin;
  o->emax = emax;
  o->explim = CPFLOAT_EXPRANGE_TARG;
  o->subnormal = subnormal ? CPFLOAT_SUBN_USE : CPFLOAT_SUBN_RND;
  o->infinity = infinity ? CPFLOAT_INF_USE : CPFLOAT_INF_NO;
  o->round = (cpfloat_rounding_t)round;
  o->saturation = saturation ? CPFLOAT_SAT_USE : CPFLOAT_SAT_NO;
  o->flip = CPFLOAT_SOFTERR_NO;
  o->p = 0.0;
  return o;
}

int harness_round_f32(float *y, const float *x, size_t n, int precision, int emin, int emax,
                      int subnormal, int infinity, int round, int saturation) {
  optstruct *o = harness_options(precision, emin, emax, subnormal, infinity, round, saturation);
  int status = cpfloatf(y, x, n, o);
  free_optstruct(o);
  return status;
}

int harness_round_f64(double *y, const double *x, size_t n, int precision, int emin, int emax,
                      int subnormal, int infinity, int round, int saturation) {
  optstruct *o = harness_options(precision, emin, emax, subnormal, infinity, round, saturation);
  int status = cpfloat(y, x, n, o);
  free_optstruct(o);
  return status;
}
