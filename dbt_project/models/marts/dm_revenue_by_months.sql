{#
    Monthly revenue: one row per calendar month with sales.

    revenue_mom_growth_pct compares with the previous calendar month. It is null for the
    first month and for a month whose previous calendar month had no sales (growth from
    nothing is undefined), rather than silently comparing with an older month.
#}
with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

dates as (
    select * from {{ ref('dim_dates') }}
),

monthly as (
    select
        dates.month_start,
        dates.year,
        dates.month,
        dates.month_name,
        count(distinct transactions.order_id) as total_orders,
        count(distinct transactions.customer_key) as total_customers,
        sum(transactions.quantity) as total_quantity,
        sum(transactions.amount) as revenue
    from transactions
    inner join dates
        on transactions.date_key = dates.date_key
    -- lines without an order date belong to no month (assert_revenue_by_months_equals_fct reports them)
    where dates.month_start is not null
    group by dates.month_start, dates.year, dates.month, dates.month_name
),

with_previous as (
    select
        *,
        lag(month_start) over (order by month_start) as previous_month_start,
        lag(revenue) over (order by month_start) as previous_revenue
    from monthly
),

final as (
    select
        cast(month_start as date) as month_start,
        cast(year as integer) as year,
        cast(month as integer) as month,
        cast(month_name as text) as month_name,
        cast(total_orders as bigint) as total_orders,
        cast(total_customers as bigint) as total_customers,
        cast(total_quantity as bigint) as total_quantity,
        cast(revenue as bigint) as revenue,
        cast(round(revenue / nullif(total_orders, 0), 2) as numeric(18, 2)) as avg_order_value,
        cast(
            case
                when previous_month_start = cast(month_start - interval '1 month' as date)
                    then round(100.0 * (revenue - previous_revenue) / nullif(previous_revenue, 0), 2)
            end
            as numeric(12, 2)
        ) as revenue_mom_growth_pct
    from with_previous
)

select * from final
