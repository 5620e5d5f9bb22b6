{#
    Cohort retention: one row per cohort (the month of a customer's first order) and month
    offset, from 0 (the cohort's own month) up to the last month with sales. An offset in which
    nobody of the cohort ordered is a row with zero active customers and zero revenue, so every
    cohort's row runs to the same last month and a heatmap has no holes.
#}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

-- each customer's orders by month (lines without an order date belong to no month)
customer_months as (
    select
        customer_key,
        cast(date_trunc('month', order_date) as date) as order_month,
        sum(amount) as revenue
    from transactions
    where order_date is not null
    group by customer_key, cast(date_trunc('month', order_date) as date)
),

cohorts as (
    select
        customer_key,
        min(order_month) as cohort_month
    from customer_months
    group by customer_key
),

cohort_sizes as (
    select
        cohort_month,
        count(*) as cohort_customers
    from cohorts
    group by cohort_month
),

last_month as (
    select max(order_month) as last_order_month
    from customer_months
),

-- every cohort with every offset up to the last month with sales
cohort_offsets as (
    select
        cohort_sizes.cohort_month,
        cohort_sizes.cohort_customers,
        month_offsets.months_since_first_order
    from cohort_sizes
    cross join last_month
    cross join lateral generate_series(
        0,
        {{ months_between('cohort_sizes.cohort_month', 'last_month.last_order_month') }}
    ) as month_offsets (months_since_first_order)
),

customer_offsets as (
    select
        cohorts.cohort_month,
        customer_months.customer_key,
        customer_months.revenue,
        {{ months_between('cohorts.cohort_month', 'customer_months.order_month') }} as months_since_first_order
    from customer_months
    inner join cohorts
        on customer_months.customer_key = cohorts.customer_key
),

activity as (
    select
        cohort_month,
        months_since_first_order,
        count(*) as active_customers,
        sum(revenue) as revenue
    from customer_offsets
    group by cohort_month, months_since_first_order
),

final as (
    select
        cast(cohort_offsets.cohort_month as date) as cohort_month,
        cast(cohort_offsets.months_since_first_order as integer) as months_since_first_order,
        cast(cohort_offsets.cohort_customers as bigint) as cohort_customers,
        cast(coalesce(activity.active_customers, 0) as bigint) as active_customers,
        cast(
            round(100.0 * coalesce(activity.active_customers, 0) / cohort_offsets.cohort_customers, 2)
            as numeric(5, 2)
        ) as retention_pct,
        cast(coalesce(activity.revenue, 0) as bigint) as revenue
    from cohort_offsets
    left join activity
        on
            cohort_offsets.cohort_month = activity.cohort_month
            and cohort_offsets.months_since_first_order = activity.months_since_first_order
)

select * from final
