#pragma once
// Layer normalisation over each row (nn.LayerNorm, eps 1e-5): y = (x - mean) / sqrt(var + eps)
// · gamma + beta, the variance biased. Forward keeps each row's mean and 1/std for backward.

#include <cmath>
#include <vector>

#include "common.hpp"

namespace tfm {

template <class T>
class LayerNorm {
 public:
  static constexpr double kEps = 1e-5;

  explicit LayerNorm(index_t dim) : gamma_(1, dim), beta_(1, dim), dgamma_(1, dim), dbeta_(1, dim) {
    for (index_t j = 0; j < dim; ++j) gamma_.view()(0, j) = T(1);
  }

  // y = LN(x); mean and rstd get one entry per row.
  void forward(Ctx& ctx, CView<T> x, View<T> y, std::vector<double>& mean,
               std::vector<double>& rstd) const {
    const index_t n = x.rows(), d = x.cols();
    mean.resize(std::size_t(n));
    rstd.resize(std::size_t(n));
#pragma omp parallel for num_threads(ctx.threads()) if (n * d > 8192)
    for (index_t i = 0; i < n; ++i) {
      double sum = 0, sq = 0;
      for (index_t j = 0; j < d; ++j) sum += double(x(i, j));
      const double mu = sum / double(d);
      for (index_t j = 0; j < d; ++j) sq += (double(x(i, j)) - mu) * (double(x(i, j)) - mu);
      const double r = 1.0 / std::sqrt(sq / double(d) + kEps);
      mean[std::size_t(i)] = mu;
      rstd[std::size_t(i)] = r;
      for (index_t j = 0; j < d; ++j)
        y(i, j) = T((double(x(i, j)) - mu) * r * double(gamma_.view()(0, j)) +
                    double(beta_.view()(0, j)));
    }
  }

  // With x̂ the normalised input and g = dy · gamma:
  //   dx = rstd (g - mean(g) - x̂ mean(g x̂)),  dgamma += Σ dy x̂,  dbeta += Σ dy.
  // dx is written (not accumulated). Rows in parallel for dx, then columns for dgamma and dbeta.
  void backward(Ctx& ctx, CView<T> x, CView<T> dy, const std::vector<double>& mean,
                const std::vector<double>& rstd, View<T> dx) {
    const index_t n = x.rows(), d = x.cols();
    const View<T> gamma = gamma_.view(), dgamma = dgamma_.view(), dbeta = dbeta_.view();
#pragma omp parallel for num_threads(ctx.threads()) if (n * d > 8192)
    for (index_t i = 0; i < n; ++i) {
      const double mu = mean[std::size_t(i)], r = rstd[std::size_t(i)];
      double g_mean = 0, gx_mean = 0;
      for (index_t j = 0; j < d; ++j) {
        const double g = double(dy(i, j)) * double(gamma(0, j));
        g_mean += g;
        gx_mean += g * (double(x(i, j)) - mu) * r;
      }
      g_mean /= double(d);
      gx_mean /= double(d);
      for (index_t j = 0; j < d; ++j) {
        const double xhat = (double(x(i, j)) - mu) * r;
        dx(i, j) = T(r * (double(dy(i, j)) * double(gamma(0, j)) - g_mean - xhat * gx_mean));
      }
    }
#pragma omp parallel for num_threads(ctx.threads()) if (n * d > 8192)
    for (index_t j = 0; j < d; ++j) {
      double sum_gamma = 0, sum_beta = 0;
      for (index_t i = 0; i < n; ++i) {
        sum_gamma +=
            double(dy(i, j)) * (double(x(i, j)) - mean[std::size_t(i)]) * rstd[std::size_t(i)];
        sum_beta += double(dy(i, j));
      }
      dgamma(0, j) += T(sum_gamma);
      dbeta(0, j) += T(sum_beta);
    }
  }

  void zero_grad(Ctx& ctx) {
    peft::cpu::fill(ctx, dgamma_.view(), 0.0);
    peft::cpu::fill(ctx, dbeta_.view(), 0.0);
  }
  // "<prefix>.weight" and "<prefix>.bias", nn.LayerNorm's names.
  std::vector<Param<T>> parameters(const std::string& prefix) {
    return {{prefix + ".weight", gamma_.view(), dgamma_.view()},
            {prefix + ".bias", beta_.view(), dbeta_.view()}};
  }

 private:
  Mat<T> gamma_, beta_, dgamma_, dbeta_;
};

}  // namespace tfm
